"""PyTorch control of `deberta pretrain` (the README's "nano recipe" table): the same RTD + GDES
recipe under the decoupled schedule, with transformers' DebertaV2ForMaskedLM as the generator
(its plain MLM head: no Enhanced Mask Decoder) and DebertaV2Model + the official RTD head as the
discriminator, AdamW with the official decay grouping, clip 1.0 per optimizer and the 0-based
warmup-linear schedule. It reads the token cache of a `deberta pretrain` run (same tokenizer,
same chunking, same held-out split: every 20th sequence). Masking: 15 % of the non-special
tokens, one per window of 6, all -> [MASK]. Prints training and held-out rows as JSON lines.

    pip install torch transformers numpy
    deberta pretrain --out runs/nano                     # the run whose tokens it reads
    python3 bench/pretrain_control.py --cache runs/nano/data/tokens.u16 --vocab 2000 \
        --steps 10000 --lr 2e-3 --disc-lr 5e-4 --warmup 0.1 --eval-every 2000 --eval-batches 8
"""
import argparse, json, math, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Model

p = argparse.ArgumentParser()
p.add_argument("--cache", required=True)  # RUN_DIR/data/tokens.u16
p.add_argument("--vocab", type=int, required=True)
p.add_argument("--steps", type=int, default=600)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=64)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--disc-lr", type=float, default=None)
p.add_argument("--warmup", type=float, default=0.05)
p.add_argument("--dropout", type=float, default=0.0)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--gen-layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--buckets", type=int, default=64)
p.add_argument("--max-rel", type=int, default=128)
p.add_argument("--rtd-weight", type=float, default=50.0)
p.add_argument("--sharing", default="gdes")
p.add_argument("--eval-every", type=int, default=150)
p.add_argument("--eval-batches", type=int, default=4)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--log-every", type=int, default=50)
p.add_argument("--bias", type=float, default=0.0)
p.add_argument("--dump", default=None)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(a.threads)
rng = np.random.default_rng(a.seed)

PAD, CLS, SEP, UNK, MASK = 0, 1, 2, 3, 4
tokens = np.fromfile(a.cache, dtype=np.uint16).astype(np.int64)
body = a.seq - 2
n_seq = math.ceil(len(tokens) / body)
train_idx = [k for k in range(n_seq) if k % 20 != 19]
eval_idx = [k for k in range(n_seq) if k % 20 == 19]


def sequences(idx):
    ids = np.full((len(idx), a.seq), PAD, dtype=np.int64)
    for r, k in enumerate(idx):
        t = tokens[k * body:(k + 1) * body]
        ids[r, 0] = CLS
        ids[r, 1:1 + len(t)] = t
        ids[r, 1 + len(t)] = SEP
    return torch.from_numpy(ids)


def mask(ids, g):
    ids = ids.clone()
    labels = torch.full_like(ids, -100)
    for r in range(ids.shape[0]):
        cand = [i for i in range(ids.shape[1]) if ids[r, i] > MASK]
        n = int(ids[r].ne(PAD).sum())
        want = max(1, round(n * 0.15))
        picks = []
        for w in range(0, len(cand), 6):
            win = cand[w:w + 6]
            picks.append(win[int(g.integers(len(win)))])
        for i in picks[:want]:
            labels[r, i] = ids[r, i]
            ids[r, i] = MASK
    return ids, labels


def config(layers):
    return DebertaV2Config(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=layers,
        num_attention_heads=a.heads, intermediate_size=4 * a.hidden, hidden_act="gelu",
        hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout,
        max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-7,
        relative_attention=True, position_buckets=a.buckets, max_relative_positions=a.max_rel,
        pad_token_id=0, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        share_att_key=True, norm_rel_ebd="layer_norm", legacy=False)


class RtdHead(nn.Module):
    def __init__(s, h):
        super().__init__()
        s.dense = nn.Linear(h, h)
        s.LayerNorm = nn.LayerNorm(h, eps=1e-7)
        s.classifier = nn.Linear(h, 1)

    def forward(s, x):
        ctx = x[:, :1, :]
        return s.classifier(F.gelu(s.dense(s.LayerNorm(x + ctx)))).squeeze(-1)


gen = DebertaV2ForMaskedLM(config(a.gen_layers))
disc = DebertaV2Model(config(a.layers))
head = RtdHead(a.hidden)
for m in head.modules():
    if isinstance(m, nn.Linear):
        m.weight.data.normal_(0, 0.02)
        m.bias.data.zero_()
gen_emb = gen.deberta.embeddings.word_embeddings
disc_emb = disc.embeddings.word_embeddings
head.classifier.bias.data.fill_(a.bias)
delta = nn.Parameter(torch.zeros_like(disc_emb.weight))


def disc_forward(ids, att):
    if a.sharing == "gdes":
        w = gen_emb.weight.detach() + delta
    elif a.sharing == "es":
        w = gen_emb.weight.detach()
    else:
        w = disc_emb.weight
    x = F.embedding(ids, w, padding_idx=0)
    h = disc(inputs_embeds=x, attention_mask=att).last_hidden_state
    return head(h)


def groups(named):
    dec = [p for n, p in named if not ("bias" in n or "LayerNorm.weight" in n)]
    nod = [p for n, p in named if ("bias" in n or "LayerNorm.weight" in n)]
    return [{"params": dec, "weight_decay": 0.01}, {"params": nod, "weight_decay": 0.0}]


gen_named = list(gen.named_parameters())
disc_named = [("d." + n, p) for n, p in disc.named_parameters()
              if not (a.sharing != "nes" and "word_embeddings" in n)]
disc_named += [("h." + n, p) for n, p in head.named_parameters()]
if a.sharing == "gdes":
    disc_named.append(("E_delta", delta))
opt_g = torch.optim.AdamW(groups(gen_named), lr=a.lr, eps=1e-6)
dlr = a.disc_lr or a.lr
opt_d = torch.optim.AdamW(groups(disc_named), lr=dlr, eps=1e-6)


def warmup_linear(k):
    x = k / a.steps
    return x / a.warmup if x < a.warmup else max(0.0, 1 - x)


def auc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return (ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def rtd_batch(ids, att, masked, labels, g_logits, gen_rng):
    sel = labels.ne(-100)
    probs = F.softmax(g_logits.float(), -1)
    samples = torch.multinomial(probs, 1, generator=gen_rng).squeeze(-1)
    corrupted = ids.clone()
    corrupted[sel] = samples
    rtd_labels = (sel & corrupted.ne(ids)).float()
    return corrupted, rtd_labels


eval_ids = sequences(eval_idx[: a.eval_batches * a.batch])
eval_g = np.random.default_rng(12345)
eval_masked, eval_labels = mask(eval_ids, eval_g)


def evaluate(step):
    gen.eval(); disc.eval(); head.eval()
    with torch.no_grad():
        att = eval_ids.ne(PAD).long()
        out = gen(input_ids=eval_masked, attention_mask=att).logits
        sel = eval_labels.ne(-100)
        lg = out[sel]
        loss = F.cross_entropy(lg, eval_labels[sel]).item()
        acc = (lg.argmax(-1) == eval_labels[sel]).float().mean().item()
        g = torch.Generator().manual_seed(999)
        corrupted, rl = rtd_batch(eval_ids, att, eval_masked, eval_labels, lg, g)
        logit = disc_forward(corrupted, att)
        if a.dump:
            np.savez(a.dump, original=eval_ids.numpy(), corrupted=corrupted.numpy(), labels=rl.numpy(), att=att.numpy(), logits=logit.numpy())
        m = att.bool()
        bce = F.binary_cross_entropy_with_logits(logit[m], rl[m]).item()
        s = logit[m].numpy(); y = rl[m].numpy()
        pr = torch.sigmoid(logit[m]).numpy()
        row = dict(step=step, eval_loss_mlm=loss, eval_mlm_accuracy=acc, eval_loss_rtd=bce,
                   eval_rtd_auc=auc(s, y), eval_rtd_recall=float(((pr > 0.5) & (y == 1)).sum() / max(1, y.sum())),
                   eval_p_original=float(pr[y == 0].mean()), eval_p_replaced=float(pr[y == 1].mean()),
                   elapsed=time.time() - t0)
    print(json.dumps(row), flush=True)
    gen.train(); disc.train(); head.train()


t0 = time.time()
order = rng.permutation(train_idx)
cursor = 0
sample_rng = torch.Generator().manual_seed(a.seed)
for step in range(a.steps):
    if cursor + a.batch > len(order):
        order = rng.permutation(train_idx); cursor = 0
    ids = sequences(order[cursor:cursor + a.batch]); cursor += a.batch
    att = ids.ne(PAD).long()
    masked, labels = mask(ids, rng)
    f = warmup_linear(step)
    for gr in opt_g.param_groups: gr["lr"] = a.lr * f
    for gr in opt_d.param_groups: gr["lr"] = dlr * f
    # generator
    logits = gen(input_ids=masked, attention_mask=att).logits
    sel = labels.ne(-100)
    lg = logits[sel]
    loss_mlm = F.cross_entropy(lg, labels[sel])
    opt_g.zero_grad(); loss_mlm.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in gen_named], 1.0)
    opt_g.step()
    with torch.no_grad():
        corrupted, rl = rtd_batch(ids, att, masked, labels, lg.detach(), sample_rng)
    logit = disc_forward(corrupted, att)
    m = att.bool()
    loss_rtd = F.binary_cross_entropy_with_logits(logit[m], rl[m])
    opt_d.zero_grad(); (a.rtd_weight * loss_rtd).backward()
    dn = torch.nn.utils.clip_grad_norm_([p for _, p in disc_named], 1.0)
    opt_d.step()
    if (step + 1) % a.log_every == 0:
        with torch.no_grad():
            pr = torch.sigmoid(logit[m]); y = rl[m]
        print(json.dumps(dict(step=step + 1, loss_mlm=loss_mlm.item(), loss_rtd=loss_rtd.item(),
                              gn_disc=float(dn), p_orig=float(pr[y == 0].mean()), p_repl=float(pr[y == 1].mean()),
                              auc=auc(logit[m].detach().numpy(), y.numpy()),
                              elapsed=time.time() - t0)), flush=True)
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
        evaluate(step + 1)
