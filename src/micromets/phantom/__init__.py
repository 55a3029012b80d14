"""Phantom slides: synthetic whole-slide images built from real tissue tiles, with lesions of known size and place.

- `pyramid`: streaming writer of OpenSlide-readable pyramidal tiled JPEG TIFFs.
- `texture`: seamless tissue texture from a folder of real H&E tiles (resampled, dihedral transforms, feathered).
- `render`: pixels of any window of a phantom, deterministic.
- `layout`: node outline, capsule and perinodal fat, lesion shapes of a prescribed maximum Feret diameter.
- `build`: one phantom slide with its ground truth (ASAP XML, GeoJSON, expected node class), and phantom sets.
"""
