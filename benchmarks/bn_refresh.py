"""BatchNorm refresh check (found by benchmarks/adapt.py, whose no-shift validation halves gained 3-9 points):
a run's BatchNorm statistics re-estimated on 600 of its own training images (unaugmented, no labels;
plain AdaBN), scored on its val and official test splits. Prints four lines.

    python benchmarks/bn_refresh.py /tmp/medclassify-bench-runs/brain_tumor_mri-fixed-recipe-s0
"""
import copy, sys
import numpy as np
from medclassify.run import load_run
from medclassify.data.cache import build_cache
from medclassify.engine import forward_images
from medclassify.training.adapt import adapt_batchnorm
run = load_run(sys.argv[1]); prep = run.preprocessing
idx = {c: i for i, c in enumerate(run.classes)}
def data(split, n=None):
    recs = run.records(split)
    if n: recs = [recs[i] for i in sorted(np.random.default_rng(0).choice(len(recs), n, replace=False))]
    c = build_cache(sorted(r.path for r in recs), prep.image_size, prep.resize, prep.channels)
    recs = [r for r in recs if r.path not in c.errors]
    return np.asarray(c.images[c.rows([r.path for r in recs])]), np.array([idx[r.label] for r in recs])
model = run.build_model()
xt, _ = data("train", 600)
m = copy.deepcopy(model); adapt_batchnorm(m, xt, prep, None, guard="none")
from sklearn.metrics import balanced_accuracy_score as bal
for split in ("val", "test"):
    x, y = data(split)
    for name, net in (("source", model), ("BN refreshed on train", m)):
        p = forward_images(net, x, prep, tta=run.tta)[0].argmax(1)
        print(f"{split:5s} {name:22s} acc {100*(p==y).mean():.1f}%  bal {100*bal(y,p):.1f}%", flush=True)
