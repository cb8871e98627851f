#!/usr/bin/env python3
"""Side-by-side peer harness: the same Stable Diffusion 1.5-architecture U-Net and VAE decoder
(diffusers' SD-1.5 configs, random weights, seed 0, f32) timed in hoa, ONNX Runtime's WebGPU
execution provider and stable-diffusion.cpp's Vulkan backend on the same adapter (here lavapipe)
in one run, with PyTorch (CPU) as the reference for outputs and FLOPs.

Usage:  python tools/peers/peers.py run [--work DIR] [--size 256] [--reps 3] [--only a,b]
Steps (each runs in its own process; `run` does them in this order and prints the table):
  make    diffusers folder (hoa), LDM single file (sd.cpp), inputs, PyTorch outputs, PyTorch's
          FlopCounterMode counts and PyTorch CPU timings
  hoa     `hoa bench --model --quick --filter sd15` (FMA ceiling, batch-1 step, VAE decode; 256
          only) and `hoa bench --model DIR --size N` (batch-2 step), and hoa's outputs through
          `cargo run --release --example peer_outputs`
  onnx    torch.onnx export (fixed shapes) of the U-Net at batch 1 and 2 and of the VAE decoder
  ort     onnxruntime-webgpu, providers=['WebGpuExecutionProvider'] (no CPU fallback allowed)
  sdcpp   cyllama-vulkan (stable-diffusion.cpp, Vulkan0): 1- and 2-step txt2img in one context
  table   the table from the steps' JSON (WORK/results/*.json) -> stdout and WORK/peers.json
Memory-heavy steps run under `flock /tmp/bigmem.lock`. Pinned versions: requirements.txt.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
STEPS = ["make", "hoa", "onnx", "ort", "sdcpp"]
BIG = {"make", "hoa", "onnx", "ort", "sdcpp"}


def load_avg():
    return open("/proc/loadavg").read().split()[0]


def save(work, step, obj):
    os.makedirs(os.path.join(work, "results"), exist_ok=True)
    obj["load_avg_end"] = load_avg()
    with open(os.path.join(work, "results", f"{step}.json"), "w") as f:
        json.dump(obj, f, indent=1)
    print(json.dumps(obj, indent=1), flush=True)


def median_time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def errors(got, ref):
    import numpy as np
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return {"error": f"shape {list(got.shape)} vs PyTorch {list(ref.shape)}"}
    d = float(np.abs(got - ref).max())
    return {"max_abs": d, "max_rel": d / float(np.abs(ref).max())}


# ---------------------------------------------------------------- make (PyTorch)

def build_models():
    """SD-1.5's U-Net / VAE / CLIP ViT-L text encoder configs, random weights (seed 0)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64).eval()
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                        down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512).eval()
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768)).eval()
    return unet, vae, te


def step_make(a):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from ldm_single_file import convert
    from single_file_real_size import tokenizer

    torch.set_num_threads(a.threads)
    w, s = a.work, a.size // 8
    folder, single = os.path.join(w, "sd15"), os.path.join(w, "sd15.safetensors")
    unet, vae, te = build_models()
    if not os.path.exists(single):
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=tokenizer("<|endoftext|>", os.path.join(w, "tok")),
            unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        del pipe
        convert(folder, single)
    del te
    g = torch.Generator().manual_seed(1)
    inputs = {
        "sample": torch.randn(2, 4, s, s, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, 768, generator=g),
        "timestep": torch.tensor([999.0]),
        "latent": torch.randn(1, 4, s, s, generator=g),
    }
    save_file(inputs, os.path.join(w, "inputs.safetensors"))
    res = {"torch": torch.__version__, "threads": a.threads, "load_avg_start": load_avg(),
           "flops": {}, "seconds": {}, "seconds_all": {}}
    outs = {}
    x, e, t = inputs["sample"], inputs["encoder_hidden_states"], inputs["timestep"]
    with torch.no_grad():
        runs = {
            "unet_b1": lambda: unet(x[:1], t, e[:1]).sample,
            "unet_b2": lambda: unet(x, t.expand(2), e).sample,
            "vae": lambda: vae.decode(inputs["latent"]).sample,
        }
        for name, fn in runs.items():
            with FlopCounterMode(display=False) as fc:
                outs[name] = fn()
            res["flops"][name] = fc.get_total_flops()
            med, all_ = median_time(fn, a.reps)
            res["seconds"][name], res["seconds_all"][name] = med, all_
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(w, "torch_out.safetensors"))
    save(w, "make", res)


# ---------------------------------------------------------------- hoa

def parse_bench(text):
    """`hoa bench --model` rows: name -> seconds, cold, GFLOP, GFLOP/s, % FMA; and the ceiling."""
    out = {}
    m = re.search(r"vec4 FMA ([\d.]+) GFLOP/s, copy ([\d.]+) GB/s", text)
    if m:
        out["fma_gflops"], out["copy_gbps"] = float(m.group(1)), float(m.group(2))
    for line in text.splitlines():
        m = re.match(r"(\w+_step_f32|\w+_decode_f32)\s+(\[.*?\](?: \+ \[.*?\])?(?: -> \S+ \w+(?: \d+)?)?)"
                     r"\s+([\d.]+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%", line)
        if m:
            out[m.group(1)] = {"input": m.group(2), "load_s": float(m.group(3)),
                               "cold_s": float(m.group(4)) / 1e3, "seconds": float(m.group(5)) / 1e3,
                               "gflop": float(m.group(7)), "gflops": float(m.group(8)),
                               "fma_pct": float(m.group(9))}
    return out


def step_hoa(a):
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", f"/tmp/xdg-peers-{os.getpid()}")
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
    hoa = os.path.join(ROOT, "target", "release", "hoa")
    res = {"load_avg_start": load_avg(), "commit": subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    runs = [[hoa, "bench", "--model", os.path.join(a.work, "sd15"), "--size", str(a.size),
             "--reps", str(a.reps)]]
    if a.size == 256:
        runs.insert(0, [hoa, "bench", "--model", "--quick", "--filter", "sd15", "--reps", str(a.reps)])
    res["commands"], res["bench"] = [], {}
    for cmd in runs:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        print(p.stdout, p.stderr[-2000:], flush=True)
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")
        res["commands"].append(" ".join(cmd[0:1] and ["hoa"] + cmd[1:]))
        b = parse_bench(p.stdout)
        # Each `hoa bench` measures its own ceiling first: keep every one.
        res.setdefault("fma_gflops_runs", []).append(b.pop("fma_gflops", None))
        res.setdefault("copy_gbps_runs", []).append(b.pop("copy_gbps", None))
        res["bench"].update(b)
        res.setdefault("stdout", []).append(p.stdout)
    # Outputs on the make step's weights and inputs.
    out = os.path.join(a.work, "hoa_out.safetensors")
    cmd = ["cargo", "run", "--release", "--example", "peer_outputs", "--",
           os.path.join(a.work, "sd15"), os.path.join(a.work, "inputs.safetensors"), out]
    p = subprocess.run(["nice", "-n", "10"] + cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"peer_outputs failed: {p.stderr[-1500:]}")
    res["adapter"] = next((l.split(": ", 1)[1] for l in p.stderr.splitlines() if l.startswith("adapter: ")), "")
    from safetensors.numpy import load_file
    got, ref = load_file(out), load_file(os.path.join(a.work, "torch_out.safetensors"))
    res["errors"] = {"unet_b2": errors(got["unet"], ref["unet_b2"]),
                     "unet_b1": errors(got["unet"][:1], ref["unet_b1"]),
                     "vae": errors(got["vae"], ref["vae"])}
    save(a.work, "hoa", res)


# ---------------------------------------------------------------- ONNX Runtime WebGPU

def step_onnx(a):
    import torch
    torch.set_num_threads(a.threads)
    from safetensors.torch import load_file
    unet, vae, _ = build_models()
    inp = load_file(os.path.join(a.work, "inputs.safetensors"))
    d = os.path.join(a.work, "onnx")
    os.makedirs(d, exist_ok=True)

    class UNetStep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, enc):
            return self.m(sample, timestep, enc, return_dict=False)[0]

    class Decode(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent):
            return self.m.decode(latent, return_dict=False)[0]

    res = {"load_avg_start": load_avg(), "export_seconds": {}}
    jobs = [(f"unet_b{b}", UNetStep(unet).eval(), (inp["sample"][:b], inp["timestep"].expand(b),
                                            inp["encoder_hidden_states"][:b]),
             ["sample", "timestep", "encoder_hidden_states"]) for b in a.batches]
    jobs.append(("vae", Decode(vae).eval(), (inp["latent"],), ["latent"]))
    for name, m, args, names in jobs:
        path = os.path.join(d, f"{name}.onnx")
        if os.path.exists(path):
            continue
        t = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(m, args, path, input_names=names, output_names=["out"],
                              dynamo=True, external_data=True, optimize=False)
        res["export_seconds"][name] = time.perf_counter() - t
    save(a.work, "onnx", res)


def placement(profile):
    """Per execution provider: how many node runs, their total ms, and the op types on the CPU."""
    by = {}
    for e in json.load(open(profile)):
        args = e.get("args", {})
        if e.get("cat") != "Node" or "provider" not in args or not e["name"].endswith("_kernel_time"):
            continue
        p = by.setdefault(args["provider"], {"nodes": 0, "ms": 0.0, "ops": {}})
        p["nodes"] += 1
        p["ms"] += e.get("dur", 0) / 1e3
        p["ops"][args.get("op_name", "?")] = p["ops"].get(args.get("op_name", "?"), 0) + 1
    for k, p in by.items():
        if k.startswith("WebGpu"):
            p.pop("ops")
    os.remove(profile)
    return by


def step_ort(a):
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file
    inp = load_file(os.path.join(a.work, "inputs.safetensors"))
    ref = load_file(os.path.join(a.work, "torch_out.safetensors"))
    # Runs of an earlier `ort` call (e.g. `--models vae`) are kept unless run again.
    old = os.path.join(a.work, "results", "ort.json")
    runs = json.load(open(old))["runs"] if os.path.exists(old) else {}
    res = {"onnxruntime": ort.__version__, "load_avg_start": load_avg(), "runs": runs}
    feeds = {f"unet_b{b}": {"sample": inp["sample"][:b], "timestep": np.repeat(inp["timestep"], b),
                            "encoder_hidden_states": inp["encoder_hidden_states"][:b]} for b in a.batches}
    feeds["vae"] = {"latent": inp["latent"]}
    for name, feed in feeds.items():
        if a.models and name not in a.models.split(","):
            continue
        path = os.path.join(a.work, "onnx", f"{name}.onnx")
        so = ort.SessionOptions()
        # ORT puts shape arithmetic on its CPU EP on purpose; a profile of the runs says which
        # nodes ran where and for how long, so the table can say whether the WebGPU EP did
        # the work.
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(a.work, f"ort_profile_{name}")
        t = time.perf_counter()
        try:
            sess = ort.InferenceSession(path, so, providers=["WebGpuExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - reported in the table
            res["runs"][name] = {"error": str(e)[:500]}
            continue
        r = {"providers": sess.get_providers(), "session_s": time.perf_counter() - t}
        t = time.perf_counter()
        out = sess.run(None, feed)[0]
        r["cold_s"] = time.perf_counter() - t
        r["seconds"], r["seconds_all"] = median_time(lambda: sess.run(None, feed), a.reps)
        r["placement"] = placement(sess.end_profiling())
        r["errors"] = errors(out, ref[name])
        r["load_avg"] = load_avg()
        res["runs"][name] = r
        del sess
        print(name, r, flush=True)
    save(a.work, "ort", res)


# ---------------------------------------------------------------- stable-diffusion.cpp

def step_sdcpp(a):
    """sd.cpp has no U-Net-only call: in ONE context (shaders compiled once, by the first call)
    txt2img with 1 and with 2 sampling steps; the difference is one step (cfg 1: one batch-1
    U-Net eval; cfg 7: cond + uncond). Its own log gives the VAE decode time."""
    os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
    import cyllama
    from cyllama.sd import SDContext, SDContextParams, set_log_callback, set_progress_callback
    log, prog = [], []
    logf = open(os.path.join(a.work, "sdcpp.log"), "a", buffering=1)  # progress while it compiles

    def on_log(level, text):
        log.append((time.perf_counter(), level, text))
        logf.write(f"{time.strftime('%H:%M:%S')} {text}")

    set_log_callback(on_log)
    set_progress_callback(lambda step, steps, sec: prog.append((step, steps, sec)))
    res = {"cyllama": getattr(cyllama, "__version__", "?"), "load_avg_start": load_avg(),
           "wtype": "f32 (the file's)", "runs": []}
    p = SDContextParams()
    p.model_path = os.path.join(a.work, "sd15.safetensors")
    p.n_threads = a.threads
    p.keep_clip_on_cpu = True
    t = time.perf_counter()
    ctx = SDContext(p)
    res["context_s"] = time.perf_counter() - t

    def gen(steps, cfg, tag):
        n0, p0 = len(log), len(prog)
        t = time.perf_counter()
        ctx.generate(prompt="a photo of a cat", negative_prompt="", width=a.size, height=a.size,
                     sample_steps=steps, cfg_scale=cfg, seed=42)
        r = {"tag": tag, "steps": steps, "cfg": cfg, "wall_s": time.perf_counter() - t,
             "progress": prog[p0:]}
        for _, _, text in log[n0:]:
            m = re.search(r"(sampling|decod\w*|get_learned_condition)[^\n]*?taking ([\d.]+) ?s", text)
            if m:
                r[m.group(1)] = float(m.group(2))
        res["runs"].append(r)
        print(r, flush=True)
        return r

    gen(1, 1.0, "cold (compiles the shaders)")
    w1 = [gen(1, 1.0, "warm") for _ in range(a.sd_reps)]
    w2 = [gen(2, 1.0, "warm") for _ in range(a.sd_reps)]
    c1 = [gen(1, 7.0, "warm cfg") for _ in range(a.sd_reps)]
    c2 = [gen(2, 7.0, "warm cfg") for _ in range(a.sd_reps)]
    med = lambda rs, k: statistics.median(r.get(k, float("nan")) for r in rs)  # noqa: E731
    for name, r1, r2 in (("unet_b1", w1, w2), ("unet_cfg", c1, c2)):
        res[name] = {"step_from_wall_s": med(r2, "wall_s") - med(r1, "wall_s"),
                     "step_from_sampling_log_s": med(r2, "sampling") - med(r1, "sampling")}
    decodes = [v for r in w1 + w2 + c1 + c2 for k, v in r.items() if k.startswith("decod")]
    res["vae"] = {"seconds": statistics.median(decodes) if decodes else None}
    res["log_tail"] = [x[2] for x in log[-60:]]
    ctx.close()
    save(a.work, "sdcpp", res)


# ---------------------------------------------------------------- table

def step_table(a):
    R = {}
    for s in STEPS:
        f = os.path.join(a.work, "results", f"{s}.json")
        if os.path.exists(f):
            R[s] = json.load(open(f))
    mk, hoa = R.get("make", {}), R.get("hoa", {})
    bench = hoa.get("bench", {})
    # The FMA ceiling: the median of those `hoa bench` measured in this run (each hoa row uses
    # its own run's, as `hoa bench` prints it).
    if "fma_gflops_runs" not in hoa:  # results written before the ceilings were kept apart
        hoa["fma_gflops_runs"] = [parse_bench(t).get("fma_gflops") for t in hoa.get("stdout", [])]
    ceils = [c for c in hoa.get("fma_gflops_runs", []) if c]
    fma = statistics.median(ceils) if ceils else None
    flops = mk.get("flops", {})
    hoa_rows = {"unet_b1": bench.get("unet_sd15_step_f32"), "unet_b2": bench.get("unet_folder_step_f32"),
                "vae": bench.get("vae_sd15_decode_f32")}
    s = a.size // 8
    what = {"unet_b1": f"U-Net step [1,4,{s},{s}]", "unet_b2": f"U-Net step [2,4,{s},{s}] (CFG)",
            "vae": f"VAE decode [1,4,{s},{s}] -> {a.size}²"}
    rows = []

    def add(engine, adapter, key, sec, cold=None, err=None, note=""):
        f = flops.get(key)
        h = (hoa_rows.get(key) or {}).get("seconds")
        g = f / sec / 1e9 if f and sec else None
        pct = 100 * g / fma if g and fma and "CPU" not in adapter else None
        if engine.startswith("hoa"):
            pct = hoa_rows[key]["fma_pct"]
        rows.append({"engine": engine, "adapter": adapter, "what": what[key], "seconds": sec,
                     "cold_seconds": cold, "vs_hoa": sec / h if sec and h else None,
                     "tflop": f / 1e12 if f else None, "gflops": g, "fma_pct": pct,
                     "max_abs_err": (err or {}).get("max_abs"), "max_rel_err": (err or {}).get("max_rel"),
                     "note": note})

    lav = "lavapipe (Vulkan)"
    for k, b in hoa_rows.items():
        if b:
            add(f"hoa {hoa.get('commit', '')}", lav, k, b["seconds"], b["cold_s"],
                hoa.get("errors", {}).get(k), f"hoa counts {b['gflop']:.1f} GFLOP")
    for k, r in R.get("ort", {}).get("runs", {}).items():
        if "error" in r:
            rows.append({"engine": "ONNX Runtime WebGPU", "adapter": lav, "what": what[k], "note": r["error"]})
        else:
            add(f"ONNX Runtime {R['ort']['onnxruntime']} WebGPU EP", "lavapipe (Dawn, Vulkan)", k,
                r["seconds"], r["cold_s"] + r["session_s"], r["errors"])
    sd = R.get("sdcpp")
    if sd:
        eng = f"stable-diffusion.cpp (cyllama-vulkan {sd['cyllama']})"
        cold = sd["runs"][0]["wall_s"] if sd.get("runs") else None
        add(eng, "lavapipe (ggml Vulkan)", "unet_b1", sd["unet_b1"]["step_from_wall_s"], cold,
            None, "2-step minus 1-step txt2img, cfg 1; output not comparable (txt2img only)")
        add(eng, "lavapipe (ggml Vulkan)", "unet_b2", sd["unet_cfg"]["step_from_wall_s"], None,
            None, "same at cfg 7 (cond + uncond as two batch-1 evals)")
        if sd["vae"]["seconds"]:
            add(eng, "lavapipe (ggml Vulkan)", "vae", sd["vae"]["seconds"], None, None, "its log's decode time")
    for k, sec in mk.get("seconds", {}).items():
        add(f"PyTorch {mk['torch']} (diffusers)", f"CPU, {mk['threads']} threads (native)", k, sec,
            None, {"max_abs": 0.0, "max_rel": 0.0}, "the reference")
    checks = []
    for k, b in hoa_rows.items():
        if b and flops.get(k):
            r = b["gflop"] * 1e9 / flops[k]
            checks.append({"what": what[k], "hoa_gflop": b["gflop"], "pytorch_gflop": flops[k] / 1e9,
                           "ratio": r, "within_1pct": abs(r - 1) <= 0.01})
    out = {"size": a.size, "fma_gflops": fma, "fma_gflops_runs": hoa.get("fma_gflops_runs"),
           "hoa_adapter": hoa.get("adapter"), "rows": rows, "flop_checks": checks,
           "load_avg": {s: [R[s].get("load_avg_start"), R[s].get("load_avg_end")] for s in R}}
    with open(os.path.join(a.work, "peers.json"), "w") as f:
        json.dump(out, f, indent=1)
    fmt = lambda v, p: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    fmte = lambda v: "—" if v is None else f"{v:.1e}"  # noqa: E731
    print(f"FMA ceiling (hoa bench, same run): {hoa.get('fma_gflops_runs')} GFLOP/s, median {fmt(fma, 1)};"
          f" adapter: {hoa.get('adapter')}")
    print("| engine | adapter | what | warm s | cold s | vs hoa | TFLOP | GFLOP/s | % FMA | max abs err | max err / max |ref| |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['adapter']} | {r['what']} | {fmt(r.get('seconds'), 2)} | "
              f"{fmt(r.get('cold_seconds'), 1)} | {fmt(r.get('vs_hoa'), 2)} | {fmt(r.get('tflop'), 3)} | "
              f"{fmt(r.get('gflops'), 1)} | {fmt(r.get('fma_pct'), 0)} | {fmte(r.get('max_abs_err'))} | "
              f"{fmte(r.get('max_rel_err'))} |" + (f" {r['note']}" if r.get("note") else ""))
    for c in checks:
        print(f"FLOPs {c['what']}: hoa {c['hoa_gflop']:.1f} GFLOP, PyTorch FlopCounterMode "
              f"{c['pytorch_gflop']:.1f} GFLOP, ratio {c['ratio']:.4f} ({'ok' if c['within_1pct'] else 'OFF BY > 1%'})")
    print("load average (start, end) per step:", out["load_avg"])
    if any(not c["within_1pct"] for c in checks):
        raise SystemExit("hoa's FLOP count is off PyTorch's by more than 1%")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=STEPS + ["run", "table"])
    ap.add_argument("--work", default="/tmp/peers_work")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sd-reps", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="", help="ort: only these of unet_b1,unet_b2,vae")
    ap.add_argument("--only", default=",".join(STEPS), help="steps of `run`, comma-separated")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.step == "run":
        for s in a.only.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), s] + sys.argv[2:]
            if s in BIG:
                cmd = ["flock", "/tmp/bigmem.lock"] + cmd
            print("==>", " ".join(cmd), "(load", load_avg() + ")", flush=True)
            if subprocess.run(cmd).returncode:
                print(f"step {s} failed; the table shows what ran", flush=True)
        step_table(a)
    else:
        {"make": step_make, "hoa": step_hoa, "onnx": step_onnx, "ort": step_ort,
         "sdcpp": step_sdcpp, "table": step_table}[a.step](a)


if __name__ == "__main__":
    main()
