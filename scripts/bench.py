#!/usr/bin/env python3
"""Benchmark, run on demand (not a test): bnfold fold-only and fold+verify, side by side with
`cp` of the same files and with the Python tools a user would pick instead, on the same models.

    python3 scripts/bench.py [MODEL.onnx ...] [--runs 5] [--large] [--out FILE]

Defaults to ../shared/models/*.onnx; --large also generates a >2 GB external-data model with
scripts/make_large_model.py (in a temporary folder) and runs bnfold and cp on it. The peers are
installed with pip into bench/.venv: onnxoptimizer (fuse_bn_into_conv plus its default fuse and
elimination passes), onnxsim, onnxslim, and onnxruntime's offline optimization at the basic
level. Each command runs --runs times; the table gives the median wall time (perf_counter around
the process) and the peak RSS (from /usr/bin/time), then each model's figures against the
targets of issue 6: fold-only at most 2x `cp`, at least 10x faster than the fastest peer, peak
RSS at most 1.25x the model (inline) or 2x its largest tensor + 64 MiB (external data); and of
issue 13: the default fold (readiness on, verification off) at most 1.5x `cp` (2x on a model with
nothing to fold), the same RSS bound on external data. The table is printed; --out also writes
it to FILE (bench/RESULTS.md is the hand-kept record of every session's figures: a run never
overwrites it unasked)."""
import argparse
import datetime
import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(ROOT, "bench", ".venv")
PEERS = ["onnxoptimizer", "onnxsim", "onnxslim", "onnxruntime", "onnx", "numpy"]

PEER_CODE = {
    "onnxoptimizer": (
        "import onnx, onnxoptimizer, sys\n"
        "m = onnx.load(sys.argv[1])\n"
        "passes = ['fuse_bn_into_conv'] + [p for p in onnxoptimizer.get_fuse_and_elimination_passes() if p != 'fuse_bn_into_conv']\n"
        "onnx.save(onnxoptimizer.optimize(m, passes), sys.argv[2])\n"
    ),
    "onnxsim": (
        "import onnx, onnxsim, sys\n"
        "m, ok = onnxsim.simplify(onnx.load(sys.argv[1]))\n"
        "onnx.save(m, sys.argv[2])\n"
    ),
    "onnxslim": (
        "import onnx, onnxslim, sys\n"
        "onnx.save(onnxslim.slim(onnx.load(sys.argv[1])), sys.argv[2])\n"
    ),
    "ort-basic": (
        "import onnxruntime as ort, sys\n"
        "so = ort.SessionOptions()\n"
        "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC\n"
        "so.optimized_model_filepath = sys.argv[2]\n"
        "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n"
    ),
}


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_peers():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", VENV])
    sh([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + PEERS)
    return py


def run_once(cmd, cleanup):
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, every thread) of one run of
    `cmd`, or the error it printed. The wall time is taken around the process; the RSS from
    /usr/bin/time (a small C parent: ru_maxrss seen from Python would count the forked Python
    image before exec); the CPU time from the rusage of that parent, which has waited for `cmd`
    (its own share is a fraction of a millisecond)."""
    cleanup()
    start = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stderr.close()
    if p.returncode != 0:
        return None, (stderr.strip().splitlines() or ["failed"])[-2:]
    cpu = usage.ru_utime + usage.ru_stime
    return (wall, int(stderr.strip().splitlines()[-1]) / 1024, cpu), None


def measure(cmds, runs, cleanup):
    """For each named command, the median wall seconds, max peak RSS and median CPU seconds over
    `runs` runs. The
    commands take turns, one run each per round after an untimed warm-up round, so that a drift
    of the machine (page cache, writeback, a noisy neighbour) affects them alike."""
    samples = {name: [] for name in cmds}
    errors = {}
    for round_ in range(runs + 1):
        for name, cmd in cmds.items():
            if name in errors:
                continue
            sample, err = run_once(cmd, cleanup)
            if err:
                errors[name] = err
            elif round_ > 0:
                samples[name].append(sample)
    results = {}
    for name in cmds:
        if name in errors:
            results[name] = (None, None, errors[name], None)
        else:
            walls = [w for w, _, _ in samples[name]]
            rss = max(r for _, r, _ in samples[name])
            cpu = statistics.median(c for _, _, c in samples[name])
            results[name] = (statistics.median(walls), rss, None, cpu)
    return results


def largest_tensor(py, model):
    """Bytes of the model's largest initializer (from its shape, without loading external data)."""
    code = (
        "import onnx, sys, numpy as np\n"
        "m = onnx.load(sys.argv[1], load_external_data=False)\n"
        "size = lambda t: int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize\n"
        "print(max((size(t) for t in m.graph.initializer), default=0))\n"
    )
    if not py:
        return None
    return int(subprocess.run([py, "-c", code, model], check=True, capture_output=True, text=True).stdout)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def revision():
    """The commit the measured binary was built from, marked `-dirty` when the working tree had
    changes (bench.py builds the tree as it is), or why it is not known."""
    try:
        r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    except OSError as e:
        return f"unknown ({e.strerror})"
    if r.returncode != 0:
        return f"unknown ({(r.stderr.strip().splitlines() or ['git failed'])[0]})"
    return r.stdout.strip()


def folder_size(model):
    d = os.path.dirname(os.path.abspath(model))
    data = [os.path.join(d, f) for f in os.listdir(d) if f.startswith(os.path.basename(model).split(".")[0] + ".data")]
    return os.path.getsize(model) + sum(os.path.getsize(p) for p in data), data


def scaling(bnfold, py, work, runs):
    """Fold-only on ever longer chains: the time should grow with the graph, not its square."""
    lines = ["Scaling (fold-only, chains of blocks from scripts/make_chain_model.py: Conv-BN-ReLU folds backward, BN-Conv-ReLU forward):", "",
             "| blocks | nodes | folds | wall s | peak RSS MiB |", "|---:|---:|---|---:|---:|"]
    out_dir = os.path.join(work, "chain-out")

    def cleanup():
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)

    # Each direction with initializers, and backward with every weight a Constant node (each
    # fold detaches four, and the weights become initializers: nodes removed per fold).
    kinds = (("backward", []), ("forward", ["--forward"]), ("backward, Constant nodes", ["--constant-nodes"]))
    for kind, flag in kinds:
        for blocks in (1000, 4000, 16000):
            model = os.path.join(work, f"chain{blocks}{'-'.join(flag)}.onnx")
            sh([py, os.path.join(HERE, "make_chain_model.py"), str(blocks), model] + flag)
            cmd = [bnfold, model, "-o", os.path.join(out_dir, "out.onnx"), "--no-verify", "--no-readiness", "-q"]
            wall, rss, err, _ = measure({"fold-only": cmd}, runs, cleanup)["fold-only"]
            row = f"{wall:.3f} | {rss:.1f}" if wall else f"failed: {err} |"
            nodes = 8 * blocks if "--constant-nodes" in flag else 3 * blocks
            lines.append(f"| {blocks} | {nodes} | {kind} | {row} |")
    # A structure-only graph, folded with the defaults (readiness on, verification off).
    for count in (100_000, 300_000, 1_000_000):
        model = os.path.join(work, f"identity{count}.onnx")
        sh([py, os.path.join(HERE, "make_chain_model.py"), str(count), model, "--identity"])
        # Without -q: a quiet run, showing no report, skips the readiness figures.
        cmd = [bnfold, model, "-o", os.path.join(out_dir, "out.onnx"), "--no-verify"]
        wall, rss, err, _ = measure({"fold": cmd}, runs, cleanup)["fold"]
        row = f"{wall:.3f} | {rss:.1f}" if wall else f"failed: {err} |"
        lines.append(f"| {count} Identity | {count} | none (default run) | {row} |")
    return lines + [""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--resnet50", action="store_true", help="also a generated ResNet-50 (scripts/make_resnet50.py; needs onnxruntime for its statistics)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--scaling", action="store_true", help="also time fold-only on chains of 1000, 4000 and 16000 Conv-BN-ReLU blocks")
    ap.add_argument("--nothing-to-fold", action="store_true", help="also each model once folded (a model with no BatchNormalization left), for the default fold's 2x target")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    models = args.models or sorted(glob.glob(os.path.join(ROOT, "..", "shared", "models", "*.onnx")))
    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    bnfold = os.path.join(ROOT, "target", "release", "bnfold")
    py = None if args.no_peers else ensure_peers()
    work = tempfile.mkdtemp(prefix="bnfold-bench-")
    large_dir = None
    if args.resnet50:
        resnet = os.path.join(work, "resnet50.onnx")
        sh([sys.executable, os.path.join(HERE, "make_resnet50.py"), resnet])
        models.append(resnet)
    if args.nothing_to_fold:
        for model in list(models):
            fused = os.path.join(work, os.path.basename(model).replace(".onnx", ".fused.onnx"))
            sh([bnfold, model, "-o", fused, "--no-verify", "--no-readiness", "-q"])
            models.append(fused)
    if args.large:
        large_dir = os.path.join(work, "large")
        sh([sys.executable, os.path.join(HERE, "make_large_model.py"), large_dir])
        models.append(os.path.join(large_dir, "large.onnx"))

    rows = []
    for model in models:
        os.sync()  # no writeback of earlier output (or of the generated model) during the runs
        name = os.path.basename(model)
        size, data_files = folder_size(model)
        external = bool(data_files)
        out_dir = os.path.join(work, "out")
        out = os.path.join(out_dir, name)

        def cleanup():
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            if external:
                os.sync()

        results = measure(
            {
                "cp": ["cp", model] + data_files + [out_dir],
                "bnfold fold-only": [bnfold, model, "-o", out, "--no-verify", "--no-readiness", "-q"],
                # Without -q (stdout goes nowhere): a quiet run skips the readiness figures.
                "bnfold default": [bnfold, model, "-o", out, "--no-verify"],
            },
            args.runs,
            cleanup,
        )
        verify_runs = 1 if external else max(1, args.runs // 2 + 1)
        results.update(measure({"bnfold fold+verify": [bnfold, model, "-o", out, "-q"]}, verify_runs, cleanup))
        if py and not external:
            peers = {peer: [py, "-c", code, model, out] for peer, code in PEER_CODE.items()}
            results.update(measure(peers, args.runs, cleanup))
        rows.append((name, size, external, results, largest_tensor(py, model)))

    lines = [
        f"# bnfold benchmark, {datetime.date.today().isoformat()}",
        "",
        f"bnfold built from {revision()}. Machine: {machine()}. Median of {args.runs} runs after a warm-up run (fold+verify: {max(1, args.runs // 2 + 1)}, once on external-data models), `cp` and bnfold fold-only taking turns; "
        "peak RSS from /usr/bin/time; CPU s is user + system time over every thread (median). bnfold fold-only is `bnfold M -o OUT --no-verify --no-readiness`; "
        "bnfold default is `bnfold M -o OUT --no-verify` (the readiness report on, computed while the model is written). "
        "Peers run as a user would: a Python process that loads, optimizes and saves. `cp` "
        "copies the model and its data files.",
        "",
        "| model | size MiB | tool | wall s | CPU s | peak RSS MiB | RSS / size |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    summary = []
    for name, size, external, results, largest in rows:
        for tool, (wall, rss, err, cpu) in results.items():
            if wall is None:
                lines.append(f"| {name} | {size / 2**20:.1f} | {tool} | failed: {' '.join(err)[:80]} | | | |")
                continue
            lines.append(f"| {name} | {size / 2**20:.1f} | {tool} | {wall:.4f} | {cpu:.4f} | {rss:.1f} | {rss * 2**20 / size:.2f} |")
        fold, fold_rss, _, _ = results["bnfold fold-only"]
        cp = results["cp"][0]
        peers = [(results[p][0], p) for p in PEER_CODE if p in results and results[p][0] is not None]
        if fold is None:
            continue
        mark = lambda ok: "met" if ok else "NOT met"
        line = f"- {name}: fold-only {fold * 1000:.1f} ms = {fold / cp:.2f}x cp ({mark(fold <= 2 * cp)})"
        if peers:
            best, who = min(peers)
            line += f"; fastest peer {who} {best * 1000:.0f} ms = {best / fold:.1f}x bnfold ({mark(best >= 10 * fold)})"
        if external and largest:
            limit = 2 * largest / 2**20 + 64
            line += f"; peak RSS {fold_rss:.1f} MiB, target 2 x {largest / 2**20:.0f} + 64 = {limit:.0f} MiB ({mark(fold_rss <= limit)})"
        elif not external:
            limit = 1.25 * size / 2**20
            line += f"; peak RSS {fold_rss:.1f} MiB, target 1.25 x size = {limit:.1f} MiB ({mark(fold_rss <= limit)})"
        default, default_rss, _, default_cpu = results["bnfold default"]
        if default is not None:
            # A model once folded (--nothing-to-fold) has no BatchNormalization left: 2x allowed.
            bound = 2.0 if name.endswith(".fused.onnx") else 1.5
            line += f"; default (readiness on) {default * 1000:.1f} ms = {default / cp:.2f}x cp (target {bound}x: {mark(default <= bound * cp)})"
            # No sharing of the work between threads can beat its CPU time over the cores.
            cores = len(os.sched_getaffinity(0))
            floor = default_cpu / cores
            line += f", CPU {default_cpu * 1000:.1f} ms: at least {floor * 1000:.1f} ms = {floor / cp:.2f}x cp on {cores} cores"
            if external and largest:
                limit = 2 * largest / 2**20 + 64
                line += f", peak RSS {default_rss:.1f} MiB against {limit:.0f} ({mark(default_rss <= limit)})"
        summary.append(line)
    lines += ["", "Against the targets:", ""] + summary + [""]
    if args.scaling:
        lines += scaling(bnfold, py or ensure_peers(), work, args.runs)
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
