"""Check (issue 8): a depth-2 gradient-boosted tree ensemble written as an ai.onnx.ml TreeEnsembleClassifier runs in
onnxruntime. With one class label and post_transform NONE, onnxruntime returns the raw margin (N, 1), equal to
scikit-learn's decision_function; a model card would say output "sigmoid". Run: python bench/detector_variants/tree_onnx_check.py
"""
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
from sklearn.ensemble import GradientBoostingClassifier
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 4)).astype(np.float32); y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
clf = GradientBoostingClassifier(max_depth=2, n_estimators=50, learning_rate=0.1, random_state=0).fit(X, y)
attrs = {k: [] for k in ['nodes_treeids', 'nodes_nodeids', 'nodes_featureids', 'nodes_values', 'nodes_modes',
                         'nodes_truenodeids', 'nodes_falsenodeids', 'class_treeids', 'class_nodeids', 'class_ids', 'class_weights']}
for t, est in enumerate(clf.estimators_[:, 0]):
    tr = est.tree_
    for n in range(tr.node_count):
        leaf = tr.children_left[n] == -1
        attrs['nodes_treeids'].append(t); attrs['nodes_nodeids'].append(n)
        attrs['nodes_featureids'].append(int(max(tr.feature[n], 0))); attrs['nodes_values'].append(float(tr.threshold[n]) if not leaf else 0.0)
        attrs['nodes_modes'].append('LEAF' if leaf else 'BRANCH_LEQ')
        attrs['nodes_truenodeids'].append(int(tr.children_left[n]) if not leaf else 0)
        attrs['nodes_falsenodeids'].append(int(tr.children_right[n]) if not leaf else 0)
        if leaf:
            attrs['class_treeids'].append(t); attrs['class_nodeids'].append(n); attrs['class_ids'].append(0)
            attrs['class_weights'].append(float(tr.value[n, 0, 0] * clf.learning_rate))
base = float(clf._raw_predict_init(X[:1])[0, 0])
node = helper.make_node('TreeEnsembleClassifier', ['x'], ['label', 'score'], domain='ai.onnx.ml', classlabels_int64s=[1],
                        base_values=[base], post_transform='NONE', **attrs)
g = helper.make_graph([node], 'gbm', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['n', 4])],
                      [helper.make_tensor_value_info('label', TensorProto.INT64, ['n']), helper.make_tensor_value_info('score', TensorProto.FLOAT, ['n', 1])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17), helper.make_opsetid('ai.onnx.ml', 3)]); m.ir_version = 8
onnx.checker.check_model(m)
s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])
out = s.run(None, {'x': X})
raw = clf.decision_function(X)
print('outputs', [o.shape for o in out], '; max |onnxruntime score - sklearn decision_function| =',
      float(np.abs(out[1][:, 0] - raw).max()))
