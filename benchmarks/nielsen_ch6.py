"""Nielsen's chapter-6 table, reproduced with fastnn's own commands.

Each row of the table (Neural Networks and Deep Learning, chapter 6,
network3.py) is run as the ``fastnn train`` command a user would type, on
the MNIST that ships with fastnn: 50,000 training images and a 10,000-image
validation split (``--val-split 0.16667``, drawn with the seed, stratified),
``--restore-best`` (the epoch with the best validation accuracy is the one
kept and reported, Nielsen's rule), a checkpoint every epoch. The test
accuracy is then ``fastnn eval``'s on the 10,000 test images.

    python benchmarks/nielsen_ch6.py --rows 1,2,3,4 --workdir RUNS --threads 1

For each finished row, one JSON line goes to the results file (row,
command, epochs, best validation epoch, its test accuracy, wall time, CPU).
Rows already there are skipped; a row whose model file exists but is
unfinished (the script or the machine was stopped) is continued with
``fastnn train --resume`` from its last checkpoint, so running the same
command again goes on where it stopped. Run one table at a time: two runs
would train the same row into the same files.

Row 7 is the vote of five row-6 networks (seeds 1..5; row 6 is seed 1):
their output probabilities averaged, as a user gets it: ``fastnn ensemble
row6.safetensors row6s2.safetensors ... -o row7.safetensors`` joins them in
one model file, then ``fastnn eval row7.safetensors``. The five are trained
one after the other, each with a checkpoint every epoch, row 6's network
being the first (row 6's command with ``--ensemble 5`` trains the five at
once, in one file). The same for any models: ``python
benchmarks/nielsen_ch6.py --vote A.safetensors B.safetensors``. Row "7e" is
row 7 as that one command (``--rows 7e --threads 2``): the five trained side
by side by ``fastnn train --ensemble 5``, checkpointed and resumed as one
file, each member bit for bit its own one-thread run.

Recipe notes (see README, "Nielsen's chapter 6"): every row has a softmax
output with the log-likelihood cost (network3.py's SoftmaxLayer; fastnn's
``--output softmax --loss cross_entropy``). network3.py adds
``0.5 * lmbda * sum(w**2) / num_training_batches`` to the mean batch cost,
fastnn (network2.py's convention) ``(l2 / 2n) sum(w**2)``: Nielsen's
lmbda = 0.1 with batches of 10 is ``--l2 1``. Row 5's expanded data is
``--augment shift`` (each image moved by up to 2 pixels, drawn anew each
epoch, in the kernel) instead of Nielsen's 250,000-image file of one-pixel
shifts: the same cost per epoch as row 4, no file built. Row 6 (and so row
7) has ``--init xavier`` (zero biases) instead of the default ``nielsen``
(biases N(0, 1)): fastnn's dropout is inverted (kept units doubled while
training), network3.py's is not, and with the N(0, 1) biases the doubled
inputs of the FC1000 layers switch the second convolution off within a few
batches, so the network stays at chance; the README has the measurements.
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results_ch6.jsonl")

CONV2 = "28x28,conv20:5,maxpool2,conv40:5,maxpool2"
COMMON = ["--output", "softmax", "--loss", "cross_entropy", "--batch-size", "10",
          "--val-split", "0.16667", "--restore-best"]
RELU = ["--activation", "relu", "--lr", "0.03", "--l2", "1"]
ROW6 = ["--layers", f"{CONV2},dropout0.5,1000,dropout0.5,1000,dropout0.5,10", *RELU,
        "--augment", "shift", "--init", "xavier", "--epochs", "40"]

#: row -> (what it is, Nielsen's test accuracy %, its fastnn train options)
ROWS = {
    "1": ("FC100 sigmoid, eta 0.1", 97.80,
          ["--layers", "784,100,10", "--activation", "sigmoid", "--lr", "0.1",
           "--epochs", "60"]),
    "2": ("conv 20x5x5, max-pool 2x2, FC100, sigmoid", 98.78,
          ["--layers", "28x28,conv20:5,maxpool2,100,10", "--activation", "sigmoid",
           "--lr", "0.1", "--epochs", "60"]),
    "3": ("two conv-pool layers (20, 40), FC100, sigmoid", 99.06,
          ["--layers", f"{CONV2},100,10", "--activation", "sigmoid", "--lr", "0.1",
           "--epochs", "60"]),
    "4": ("row 3 with ReLU, eta 0.03, L2 lambda 0.1 (--l2 1)", 99.23,
          ["--layers", f"{CONV2},100,10", *RELU, "--epochs", "60"]),
    "5": ("row 4 on shifted images (--augment shift)", 99.37,
          ["--layers", f"{CONV2},100,10", *RELU, "--augment", "shift", "--epochs", "60"]),
    "6": ("row 5 with two FC1000 ReLU layers, dropout 0.5, 40 epochs (--init xavier)", 99.60,
          ROW6),
}
#: Row 7: the seeds of the five row-6 networks that vote (row 6 is the first).
VOTE_SEEDS = (1, 2, 3, 4, 5)
VOTE_NIELSEN = 99.67
#: Row "7e": row 7 as one command, row 6's with ``--ensemble 5`` (the five
#: networks trained at once by fit_many, one thread each, bit for bit as
#: their own runs with one thread).
ENSEMBLE_WHAT = "row 7 as one command: row 6's with --ensemble 5"
SEED = 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fastnn(*args):
    """The command line of `fastnn ARGS` as this Python runs it."""
    return [sys.executable, "-m", "fastnn", *args]


def shown(args):
    """The command as a user types it."""
    return "fastnn " + shlex.join(args)


def read_results(path):
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    rows[record["row"]] = record
    return rows


def trainings(path):
    """The "training" records of a model file: one, or one per member of an
    ensemble (``fastnn train --ensemble K``)."""
    from fastnn.io import read_header

    fields = read_header(path).fields
    if "members" in fields:
        return [header["training"] for _, header in fields["members"]]
    return [fields["training"]]


def epochs_done(path):
    """The epochs every network of the file has finished."""
    return min(t.get("cli", {}).get("epochs_done", 0) for t in trainings(path))


def latest(model):
    """The model file to go on from: the checkpoint beside it
    (MODEL.checkpoint.safetensors) if that has more epochs."""
    from fastnn.files import sibling

    checkpoint = sibling(model, "checkpoint")
    if os.path.exists(checkpoint) and epochs_done(checkpoint) > epochs_done(model):
        return checkpoint
    return model


def model_state(path):
    """None (no model yet), "unfinished" or "finished"."""
    if not os.path.exists(path):
        return None
    return "finished" if all(
        t.get("cli", {}).get("epochs_done", 0) >= t.get("cli", {}).get("epochs", 1)
        and not t.get("best", {}).get("pending") for t in trainings(latest(path))) \
        else "unfinished"


def command(options, seed, threads, model, extra=()):
    """A row's fastnn train arguments."""
    return ["train", "mnist", *options, *COMMON, *extra, "--seed", str(seed),
            "--threads", str(threads), "--checkpoint-every", "1", "-o", model]


def train_row(name, options, workdir, threads, seed, log, extra=()):
    """Train (or go on training) one network; returns (the command, the
    model file, its segments' wall seconds, their epoch seconds)."""
    model = os.path.join(workdir, f"row{name}.safetensors")
    args = command(options, seed, threads, model, extra)
    segments_file = os.path.join(workdir, f"row{name}.segments.jsonl")
    state = model_state(model)
    if state != "finished":
        k = sum(1 for _ in open(segments_file)) if os.path.exists(segments_file) else 0
        history = os.path.join(workdir, f"row{name}.history.{k}.json")
        # a resumed run that was stopped left its checkpoints beside the model
        # (fastnn never replaces a file that existed before a run that did
        # not finish): go on from the later of the two
        resume = latest(model)
        run = (args if state is None else
               ["train", "--resume", resume, "-o", model, "--threads", str(threads),
                "--checkpoint-every", "1"])
        run = [*run, "--history", history]
        with open(segments_file, "a") as f:
            f.write(json.dumps({"segment": k, "start": time.time(), "history": history,
                                "command": shown(run)}) + "\n")
        print(f"[row {name}] {shown(run)}", file=log, flush=True)
        done = subprocess.run(fastnn(*run), stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"row {name}: fastnn train exited with {done.returncode}")
    wall, epoch_seconds = 0.0, 0.0
    with open(segments_file) as f:
        for line in f:
            segment = json.loads(line)
            if os.path.exists(segment["history"]):
                # a segment that was killed counts up to its last checkpoint
                wall += os.path.getmtime(segment["history"]) - segment["start"]
                with open(segment["history"]) as h:
                    history = json.load(h)
                # an ensemble's history has one per member (trained side by side)
                for member in history.get("members", [history]):
                    epoch_seconds += sum(s for s in member.get("seconds", []) if s)
    return args, model, wall, epoch_seconds


def evaluate(model, threads):
    out = subprocess.run(fastnn("eval", model, "--json", "--threads", str(threads)),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["accuracy"]


def vote(models, workdir, threads, name="row7"):
    """Row 7 as a user runs it: ``fastnn ensemble MODELS -o NAME.safetensors``,
    then ``fastnn eval``; returns (the ensemble's file, its test accuracy)."""
    out = os.path.join(workdir, f"{name}.safetensors")
    subprocess.run(fastnn("ensemble", *models, "-o", out), check=True, capture_output=True,
                   text=True)
    return out, evaluate(out, threads)


def record_for(row, what, nielsen, args, model, wall, epoch_seconds, test_accuracy):
    """A finished row's JSON line; for an ensemble (row 7e) the best
    validation epoch and accuracy are lists, one per network."""
    members = trainings(model)
    best = [t["best"] for t in members]
    one = len(members) == 1
    return {"row": row, "what": what, "nielsen": nielsen, "command": shown(args),
            "epochs": min(t["cli"]["epochs_done"] for t in members),
            "best_val_epoch": best[0]["epoch"] if one else [b["epoch"] for b in best],
            "best_val_accuracy": best[0]["value"] if one else [b["value"] for b in best],
            "test_accuracy": test_accuracy, "wall_seconds": round(wall, 1),
            "epoch_seconds": round(epoch_seconds, 1), "cpu": cpu_model()}


def markdown(results):
    """The README's table and commands, from the results file's rows (rows
    not there are marked "not yet run": edit by hand what is running)."""
    lines = ["| row | network and recipe | epochs | best validation epoch | test accuracy "
             "| Nielsen | wall time | CPU |", "|---|---|---|---|---|---|---|---|"]
    commands = []
    for row in [*ROWS, "7"]:
        what, nielsen = (ROWS[row][:2] if row in ROWS else
                         ("vote of five row-6 networks (averaged outputs)", VOTE_NIELSEN))
        if row in ROWS:
            commands.append(f"# row {row}\n"
                            + shown(command(ROWS[row][2], SEED, 1, f"row{row}.safetensors")))
        else:
            commands.append(f"# row 7: row 6 with --seed 2, 3, 4 and 5 (-o row6s2.safetensors"
                            f" ...), then\nfastnn ensemble "
                            + " ".join(f"row6{'' if s == SEED else f's{s}'}.safetensors"
                                       for s in VOTE_SEEDS)
                            + " -o row7.safetensors\nfastnn eval row7.safetensors")
        r = results.get(row)
        if r is None:
            lines.append(f"| {row} | {what} | | | not yet run | {nielsen:.2f} % | | |")
            continue
        lines.append(f"| {row} | {what} | {r.get('epochs', '')} | {r.get('best_val_epoch', '')} "
                     f"| **{100 * r['test_accuracy']:.2f} %** | {nielsen:.2f} % "
                     f"| {r['wall_seconds'] / 60:.1f} min | {r['cpu']} |")
    r = results.get("7e")
    if r is not None:
        # row 7 as one command: shown once it has run
        commands.append("# row 7 in one command: row 6's with --ensemble 5\n"
                        + shown(command(ROWS["6"][2], SEED, 2, "row7e.safetensors",
                                        ["--ensemble", str(len(VOTE_SEEDS))]))
                        + "\nfastnn eval row7e.safetensors")
        lines.append(f"| 7e | {ENSEMBLE_WHAT} | {r['epochs']} | "
                     f"{', '.join(map(str, r['best_val_epoch']))} "
                     f"| **{100 * r['test_accuracy']:.2f} %** | {VOTE_NIELSEN:.2f} % "
                     f"| {r['wall_seconds'] / 60:.1f} min | {r['cpu']} |")
    return "\n".join(lines) + "\n\n```sh\n" + "\n".join(commands) + "\n```"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,2,3,4,5,6,7",
                        help="comma-separated rows to run, in order [%(default)s]")
    parser.add_argument("--workdir", default="nielsen_ch6_runs",
                        help="model, checkpoint and history files [%(default)s]")
    parser.add_argument("--results", default=RESULTS, help="JSON lines [%(default)s]")
    parser.add_argument("--threads", type=int, default=1, help="fastnn train --threads")
    parser.add_argument("--smoke", type=int, metavar="N",
                        help="a check of the script, not the table: N images, 2 epochs")
    parser.add_argument("--vote", nargs="+", metavar="MODEL",
                        help="only print the test accuracy of these models' averaged outputs "
                             "(fastnn ensemble, written as WORKDIR/vote.safetensors)")
    parser.add_argument("--markdown", action="store_true",
                        help="only print the README's table from the results file")
    a = parser.parse_args(argv)
    if a.markdown:
        print(markdown(read_results(a.results)))
        return
    if a.vote:
        os.makedirs(a.workdir, exist_ok=True)
        print(f"{vote(a.vote, a.workdir, a.threads, 'vote')[1]:.4f}")
        return
    os.makedirs(a.workdir, exist_ok=True)
    log = sys.stdout
    extra = ["--limit", str(a.smoke), "--epochs", "2"] if a.smoke else []
    for row in a.rows.split(","):
        row = row.strip()
        if row not in ROWS and row not in ("7", "7e"):
            raise SystemExit(f"no row {row!r}; rows are 1..7 and 7e (row 7 by --ensemble 5)")
        if row in read_results(a.results):
            print(f"[row {row}] done, in {a.results}", flush=True)
            continue
        if row == "7":
            members, wall, epoch_seconds = [], 0.0, 0.0
            for seed in VOTE_SEEDS:
                name = "6" if seed == SEED else f"6s{seed}"
                args, model, w, e = train_row(name, ROWS["6"][2], a.workdir, a.threads,
                                              seed, log, extra)
                members.append(model)
                wall, epoch_seconds = wall + w, epoch_seconds + e
            record = {"row": "7", "what": "vote of five row-6 networks (averaged outputs)",
                      "nielsen": VOTE_NIELSEN,
                      "command": shown(["ensemble", *map(os.path.basename, members),
                                        "-o", "row7.safetensors"]),
                      "members": [os.path.basename(m) for m in members],
                      "test_accuracy": vote(members, a.workdir, a.threads)[1],
                      "wall_seconds": round(wall, 1), "epoch_seconds": round(epoch_seconds, 1),
                      "cpu": cpu_model()}
        elif row == "7e":
            args, model, wall, epoch_seconds = train_row(
                row, ROWS["6"][2], a.workdir, a.threads, SEED, log,
                [*extra, "--ensemble", str(len(VOTE_SEEDS))])
            record = record_for(row, ENSEMBLE_WHAT, VOTE_NIELSEN, args, model, wall,
                                epoch_seconds, evaluate(model, a.threads))
        else:
            what, nielsen, options = ROWS[row]
            args, model, wall, epoch_seconds = train_row(row, options, a.workdir, a.threads,
                                                         SEED, log, extra)
            record = record_for(row, what, nielsen, args, model, wall, epoch_seconds,
                                evaluate(model, a.threads))
        with open(a.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[row {row}] {json.dumps(record)}", flush=True)


if __name__ == "__main__":
    main()
