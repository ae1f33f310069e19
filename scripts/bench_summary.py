"""Combines the outputs of scripts/bench.sh (bench.json from `webdiffusion bench`, peers.json
from scripts/bench_peers.py, browser.json from tests/browser/bench.mjs) in one folder into
summary.md and summary.json, with the machine they ran on, and prints the markdown.

    python scripts/bench_summary.py DIR
"""

import datetime
import json
import os
import pathlib
import platform
import sys


def load(d, name):
    p = d / name
    if not p.is_file():
        sys.exit(f"bench_summary: {p} is missing; run scripts/bench.sh to make it")
    return json.loads(p.read_text())


def fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return a / b if (a is not None and b) else None


def first_line(text):
    line = (text or "").split("\n")[0].strip()
    return line.removeprefix("adapter:").strip() or None


def cpu_model():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/bench_summary.py DIR (the folder scripts/bench.sh wrote)")
    d = pathlib.Path(sys.argv[1])
    ours, peers, browser = load(d, "bench.json"), load(d, "peers.json"), load(d, "browser.json")
    machine = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "native_adapter": first_line(ours.get("adapter")),
        "browser": f"Chromium {browser.get('chromium')}",
        "browser_adapter": first_line(browser.get("adapter")),
        "browser_adapter_features": (browser.get("adapter") or "").split("\n")[1:2],
        "browser_adapter_info": browser.get("adapter_info"),
        "torch": peers.get("torch"),
        "onnxruntime": peers.get("onnxruntime"),
        "onnxruntime_web": browser.get("ort_version"),
        "threads_cpu_peers": peers.get("threads"),
    }
    fwd = []
    for f in ours["unet_forward"]:
        b = f["batch"]
        p = next((r for r in peers["unet_forward"] if r["batch"] == b), {})
        w = next((r for r in browser["unet_forward"] if r["batch"] == b), {})
        row = {
            "batch": b,
            "ours_native_ms": f["wall_ms_median"],
            "ours_native_gpu_sum_ms": f.get("gpu_ms_sum_of_kernels"),
            "torch_cpu_ms": p.get("torch_ms_median"),
            "ort_cpu_ms": p.get("ort_ms_median"),
            "ours_browser_ms": w.get("ours_ms_median"),
            "ours_browser_gpu_sum_ms": w.get("ours_gpu_ms_sum_of_kernels"),
            "ort_web_ms": w.get("ort_ms_median"),
            "browser_parity_rel": (w.get("parity") or {}).get("rel"),
        }
        row["ours_native_over_torch"] = ratio(row["ours_native_ms"], row["torch_cpu_ms"])
        row["ours_native_over_ort_cpu"] = ratio(row["ours_native_ms"], row["ort_cpu_ms"])
        row["ours_browser_over_ort_web"] = ratio(row["ours_browser_ms"], row["ort_web_ms"])
        fwd.append(row)
    samp = []
    for s in ours["sampling"]:
        name = s["solver"]
        p = next((r for r in peers["sampling"] if r["solver"] == name), {})
        w = next((r for r in browser["sampling"] if r["solver"] == name), {})
        row = {
            "solver": name,
            "steps": s["steps"],
            "ours_native_ms": s["ms_per_image_median"],
            "torch_cpu_ms": p.get("torch_ms_per_image_median"),
            "ort_cpu_ms": p.get("ort_ms_per_image_median"),
            "ours_browser_ms": w.get("ours_ms_per_image_median"),
            "ort_web_ms": w.get("ort_ms_per_image_median"),
        }
        row["ours_native_over_torch"] = ratio(row["ours_native_ms"], row["torch_cpu_ms"])
        row["ours_native_over_ort_cpu"] = ratio(row["ours_native_ms"], row["ort_cpu_ms"])
        row["ours_browser_over_ort_web"] = ratio(row["ours_browser_ms"], row["ort_web_ms"])
        samp.append(row)
    summary = {"machine": machine, "unet_forward": fwd, "sampling": samp}
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    m = machine
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_1_5_15'][0]:.2f} at the end; "
        f"{m['date_utc']} UTC.",
        f"Native adapter: {m['native_adapter']}. Browser: {m['browser']}, adapter {m['browser_adapter']}"
        + (
            f" ({(m['browser_adapter_info'] or {}).get('description') or ' '.join(filter(None, [(m['browser_adapter_info'] or {}).get('vendor'), (m['browser_adapter_info'] or {}).get('architecture')]))}"
            + (", fallback adapter" if (m["browser_adapter_info"] or {}).get("isFallbackAdapter") else "")
            + ")"
            if m["browser_adapter_info"]
            else ""
        )
        + ".",
        f"Peers: PyTorch {m['torch']} and onnxruntime {m['onnxruntime']} (CPU EP) with {m['threads_cpu_peers']} "
        f"threads; onnxruntime-web {m['onnxruntime_web']} (WebGPU EP).",
        "",
        "| UNet forward | ours native ms | torch CPU ms | ORT CPU ms | ours / torch | ours / ORT CPU "
        "| ours browser ms | ORT Web ms | ours / ORT Web | parity ours vs ORT Web (rel) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in fwd:
        par = r["browser_parity_rel"]
        lines.append(
            f"| batch {r['batch']} | {fmt(r['ours_native_ms'])} | {fmt(r['torch_cpu_ms'])} | {fmt(r['ort_cpu_ms'])} "
            f"| {fmt(r['ours_native_over_torch'], 2)} | {fmt(r['ours_native_over_ort_cpu'], 2)} "
            f"| {fmt(r['ours_browser_ms'])} | {fmt(r['ort_web_ms'])} | {fmt(r['ours_browser_over_ort_web'], 2)} "
            f"| {'n/a' if par is None else f'{par:.1e}'} |"
        )
    steps = samp[0]["steps"] if samp else "-"
    lines += [
        "",
        f"| sampling, batch 1, {steps} steps, ms/image | ours native | torch CPU | ORT CPU | ours / torch "
        "| ours / ORT CPU | ours browser | ORT Web | ours / ORT Web |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in samp:
        lines.append(
            f"| {r['solver']} | {fmt(r['ours_native_ms'])} | {fmt(r['torch_cpu_ms'])} | {fmt(r['ort_cpu_ms'])} "
            f"| {fmt(r['ours_native_over_torch'], 2)} | {fmt(r['ours_native_over_ort_cpu'], 2)} "
            f"| {fmt(r['ours_browser_ms'])} | {fmt(r['ort_web_ms'])} | {fmt(r['ours_browser_over_ort_web'], 2)} |"
        )
    md = "\n".join(lines) + "\n"
    (d / "summary.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
