"""Controlled short runs: why the BiGAN part hurts tribigan's embedding (results: benchmarks/results/gan_diagnosis.md).

    python benchmarks/gan_diagnosis.py --family tribigan --steps 300 --seed 0 --out res.json [variant flags]

One process, one torch thread, the Fashion-MNIST training split in memory (first make the cache:
    python benchmarks/gan_diagnosis.py --make-cache data/fashion-mnist-28):
validation queries = train[50000:52000], gallery = train[0:8000], labelled = 60 per class drawn from
train[0:50000] (label draw fixed, independent of --seed), unlabelled batches from train[0:50000].
The test split is never read. tribigan's networks and losses (tgan.families, tgan.losses.mining)
with the step written out here, because the variants it tests are not (all) tgan options:
--on trunk|proj (triplet on E's conv features or on a 2-layer projection head instead of E(x)),
--bn joint (labelled rows in the same E forward as the unlabelled ones), --aug (labelled stream only),
--lr_d/--lr_g (TTUR), --r1 (R1 penalty on D), --sn (spectral norm on D), --tw (triplet weight).
Every --eval_every steps it logs mean losses, E's gradient norm and validation mAP / 1-NN / 9-NN of
E(x) ("latent"), of E's conv features ("trunk") and of the head ("proj").
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from tgan.config import ModelConfig
from tgan.data.augment import augment
from tgan.data.streams import load_split
from tgan.eval.metrics import retrieval_metrics
from tgan.families import get_family
from tgan.losses.base import sample_z
from tgan.losses.mining import global_triplet_loss

torch.set_num_threads(1)
CACHE = "/tmp/tgan_fmnist_train.pt"

p = argparse.ArgumentParser()
p.add_argument("--family", default="tribigan")  # tribigan | triplet | bigan
p.add_argument("--steps", type=int, default=600)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--width", type=float, default=0.25)
p.add_argument("--tw", type=float, default=1.0)
p.add_argument("--on", default="latent")  # latent | trunk | proj: where the triplet loss acts
p.add_argument("--bn", default="train")  # train | joint (labelled rows in the same E forward as unlabelled)
p.add_argument("--aug", default="none")
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--lr_d", type=float, default=None)
p.add_argument("--lr_g", type=float, default=None)
p.add_argument("--r1", type=float, default=0.0)
p.add_argument("--sn", action="store_true")
p.add_argument("--per_class", type=int, default=60)
p.add_argument("--lb", type=int, default=50)
p.add_argument("--ubs", type=int, default=100)
p.add_argument("--eval_every", type=int, default=100)
p.add_argument("--out", default="")
p.add_argument("--make-cache", default="", help="shards directory: write the in-memory copy of its train split and exit")
a = p.parse_args()
if a.make_cache:
    x, y = load_split(a.make_cache, "train")
    torch.save({"x": (x * 127.5 + 127.5).round().to(torch.uint8), "y": y}, CACHE)
    raise SystemExit(0)

torch.manual_seed(1234)
d = torch.load(CACHE)
X = d["x"].float() / 127.5 - 1
Y = d["y"]
pool = torch.arange(50000)
vq, gal = torch.arange(50000, 52000), torch.arange(0, 8000)
size, latent = 28, 100
g = torch.Generator().manual_seed(0)
lab = torch.cat([pool[Y[pool] == c][torch.randperm(int((Y[pool] == c).sum()), generator=g)[:a.per_class]] for c in range(10)])

torch.manual_seed(a.seed)
fam = get_family("tribigan")
nets = fam.build_networks(ModelConfig(family="tribigan", latent_dim=latent, width=a.width), channels=1, image_size=size, num_classes=10)
E, G, D = nets["E"], nets["G"], nets["D"]
feat_dim = E.trunk.out_features
proj = nn.Sequential(nn.Linear(feat_dim, 256), nn.LeakyReLU(0.2), nn.Linear(256, 128)) if a.on == "proj" else None
if a.sn:
    for m in D.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(m)
ge_params = list(E.parameters()) + ([] if a.family == "triplet" else list(G.parameters())) + (list(proj.parameters()) if proj else [])
opt_ge = torch.optim.Adam(ge_params, lr=a.lr_g or a.lr, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=a.lr_d or a.lr, betas=(0.5, 0.999))


def trunk(x):
    return E.trunk(x).flatten(1)


def embed_labelled(xl, h=None):
    h = trunk(xl) if h is None else h
    if a.on == "latent":
        return E.head(h)
    if a.on == "trunk":
        return h
    return proj(h)


@torch.no_grad()
def evaluate():
    E.eval()
    outs = {}
    for name, idx in (("gal", gal), ("q", vq)):
        hs, zs, ps = [], [], []
        for i in range(0, len(idx), 500):
            h = trunk(X[idx[i:i + 500]])
            hs.append(h); zs.append(E.head(h)); ps.append(proj(h) if proj else h[:, :1])
        outs[name] = (torch.cat(hs), torch.cat(zs), torch.cat(ps))
    E.train()
    res = {}
    for k, j in (("latent", 1), ("trunk", 0)) + ((("proj", 2),) if proj else ()):
        r = retrieval_metrics(outs["gal"][j], Y[gal], outs["q"][j], Y[vq], max_k=9)
        res[k] = {"map": round(100 * r.mean_average_precision, 2), "knn1": round(100 * r.knn_accuracy[0], 2), "knn9": round(100 * r.knn_accuracy[8], 2)}
    return res


perm_g = torch.Generator().manual_seed(a.seed + 100)
log = []
t0 = time.time()
ubs, step_hist = a.ubs, []
NP = len(pool)
upos, uperm = 0, torch.randperm(NP, generator=perm_g)
for step in range(1, a.steps + 1):
    if upos + ubs > NP:
        uperm, upos = torch.randperm(NP, generator=perm_g), 0
    x = X[pool[uperm[upos:upos + ubs]]]; upos += ubs
    li = lab[torch.randint(len(lab), (a.lb,), generator=perm_g)]
    xl, yl = augment(X[li], a.aug, perm_g), Y[li]
    sc = {}
    if a.family != "triplet":
        # D phase
        z = sample_z("normal", ubs, latent)
        with torch.no_grad():
            ze, xf = E(x), G(z)
        xr = x.requires_grad_(a.r1 > 0)
        real, fake = D(xr, ze), D(xf, z)
        ld = F.softplus(-real).mean() + F.softplus(fake).mean()
        if a.r1 > 0:
            grad, = torch.autograd.grad(real.sum(), xr, create_graph=True)
            ld = ld + a.r1 / 2 * grad.pow(2).flatten(1).sum(1).mean()
        opt_d.zero_grad(); ld.backward(); opt_d.step()
        x = x.detach()
        sc.update(ld=ld.item(), dreal=torch.sigmoid(real).mean().item(), dfake=torch.sigmoid(fake).mean().item())
    # G/E phase
    for p_ in D.parameters():
        p_.requires_grad_(False)
    loss = 0.0
    if a.family != "triplet":
        z = sample_z("normal", ubs, latent)
        if a.bn == "joint":
            h = trunk(torch.cat([x, xl]))
            ze, hl = E.head(h[:ubs]), h[ubs:]
        else:
            ze, hl = E(x), None
        real, fake = D(x, ze), D(G(z), z)
        lg = F.softplus(real).mean() + F.softplus(-fake).mean()
        loss = lg
        sc["lg"] = lg.item()
    else:
        hl = None
    if a.family != "bigan":
        tl, n = global_triplet_loss(embed_labelled(xl, hl), yl, form="softmax", miner="all", margin=1.0)
        loss = loss + a.tw * tl
        sc["lt"] = tl.item()
    opt_ge.zero_grad(); loss.backward()
    sc["gnE"] = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in E.parameters() if q.grad is not None])).item()
    opt_ge.step()
    for p_ in D.parameters():
        p_.requires_grad_(True)
    step_hist.append(sc)
    if step % a.eval_every == 0 or step == a.steps:
        avg = {k: round(sum(s.get(k, 0) for s in step_hist) / len(step_hist), 4) for k in step_hist[-1]}
        step_hist = []
        rec = {"step": step, "t": round(time.time() - t0, 1), **avg, **{f"{k}_{m}": v for k, r in evaluate().items() for m, v in r.items()}}
        log.append(rec)
        print(json.dumps(rec), flush=True)
out = {"args": vars(a), "log": log, "wall": time.time() - t0}
if a.out:
    json.dump(out, open(a.out, "w"))
