"""Training of the tumour detector with torch (the optional ``.[train]`` extra); never imported by inference.

Modules: :mod:`~micromets.train.data` (dataset loaders, all resampled to the model's µm/px),
:mod:`~micromets.train.augment` (pathology augmentation), :mod:`~micromets.train.net` (small CNNs),
:mod:`~micromets.train.fit` (training loop, held-out protocol, ONNX export with model card).
"""
