"""Exact BTKD across processes: N gloo processes with batch b each give the loss terms and the
(DDP-averaged) gradients of one process with batch N * b, to 1e-6, even when the processes hold very
different numbers of wrong samples."""

import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from btkd import BTKD, Distill

WORLD = 2
CASES = {
    "btkd_kd_subset": lambda: BTKD("kd", validate=False),
    "btkd_kd_batch": lambda: BTKD("kd", reduction="batch", validate=False),
    "btkd_kd_nosplit": lambda: BTKD("kd", split=False, validate=False),
    "btkd_kd_none": lambda: BTKD("kd", rectify="none", validate=False),
    "btkd_kd_reweight": lambda: BTKD("kd", rectify="reweight", validate=False),
    "btkd_dkd": lambda: BTKD("dkd", warmup=0, validate=False),
    "btkd_kd_ls": lambda: BTKD("kd_ls", validate=False),
    "btkd_nkd": lambda: BTKD("nkd", validate=False),
    "distill_kd": lambda: Distill("kd", validate=False),
    "btkd_dist": lambda: BTKD("dist", validate=False),
    "btkd_dist_batch_terms": lambda: BTKD("dist", batch_terms="batch", reduction="batch", validate=False),
    "distill_dist": lambda: Distill("dist", validate=False),
    "btkd_ctkd": lambda: BTKD("ctkd", validate=False),  # its temperature's gradient averaged like DDP's
    "btkd_mlkd": lambda: BTKD("mlkd", validate=False),  # batch and class relations over the global batch
    "btkd_mlkd_batch_terms": lambda: BTKD("mlkd", batch_terms="batch", reduction="batch", validate=False),
    "distill_mlkd_2v": lambda: Distill("mlkd", relation_views="both", validate=False),  # two views
    "btkd_mlkd_2v": lambda: BTKD("mlkd", validate=False),
    # the confidence shares over the global batch: rank 0's teacher is saturated (a share of 1 there alone)
    "btkd_mlkd_authors_2v": lambda: BTKD("mlkd", authors_code=True, validate=False),
    "distill_mlkd_authors": lambda: Distill("mlkd", authors_code=True, validate=False),
}


def case_teacher(name, teacher):
    """The teacher of a case: for MLKD's authors_code, the first 8 rows so confident that their float32
    top probability is exactly 1, so that the two halves' confidence shares differ from the whole's."""
    if "authors" not in name:
        return teacher
    scale = torch.ones(teacher.shape[0], 1, dtype=teacher.dtype)
    scale[:8] = 30.0
    return teacher * scale


def problem():
    """16 samples; the teacher is wrong on 1 of the first 8 and on 5 of the last 8."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    teacher = torch.nn.functional.one_hot(y, 4).double() * 3 + 0.1 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    for i in (2, 9, 10, 12, 13, 15):  # make these wrong: another class on top
        teacher[i, (y[i] + 1) % 4] += 5
    return x, y, teacher


def terms_and_grads(name, x, y, teacher):
    torch.manual_seed(1)
    student = torch.nn.Linear(6, 4).double()
    loss = CASES[name]()
    if tdist.is_initialized():
        loss.distribute("world")
    loss.double()
    loss.set_epoch(3, 10)  # CTKD's reversal strength > 0
    weights = loss.weights(3, 10) if isinstance(loss, BTKD) else None
    logits = student(x)
    if name.endswith("_2v"):  # a second view: another input, and a teacher wrong on other rows
        logits, teacher = [logits, student(0.5 * x.flip(1))], [teacher, teacher.roll(1, dims=1)]
    terms = loss.compute(logits, teacher, y, weights) if weights else loss.compute(logits, teacher, y)
    terms["total"].backward()
    grads = torch.cat([p.grad.flatten() for p in list(student.parameters()) + list(loss.parameters())])
    values = torch.stack([terms[k].detach().double() for k in sorted(terms) if k not in ("n_wrong", "n_rectified", "beta")])
    return values, grads


def worker(rank, init_file, queue):
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y, teacher = problem()
        part = slice(rank * 8, rank * 8 + 8)
        out = {}
        for name in CASES:
            values, grads = terms_and_grads(name, x[part], y[part], case_teacher(name, teacher)[part])
            tdist.all_reduce(values)  # the mean over processes of each term = what the engine logs
            tdist.all_reduce(grads)  # DDP: the average of the processes' gradients
            out[name] = ((values / WORLD).tolist(), (grads / WORLD).tolist())  # plain data: the process exits
        if rank == 0:
            queue.put(out)
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every case computed once by two gloo processes, each on its half of the batch."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init = tmp_path_factory.mktemp("dist") / "init"
    procs = [ctx.Process(target=worker, args=(r, str(init), queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    out = queue.get(timeout=180)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_with_the_whole_batch(name, two_processes):
    x, y, teacher = problem()
    want_values, want_grads = terms_and_grads(name, x, y, case_teacher(name, teacher))
    got_values, got_grads = (torch.tensor(v, dtype=torch.float64) for v in two_processes[name])
    torch.testing.assert_close(got_values, want_values, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_grads, want_grads, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["kd", "ctkd", "mlkd"])
def test_torchrun_two_processes_train_like_one_process_with_the_global_batch(tmp_path, method):
    """The engine end to end: `btkd distill` (KD+BTKD; CTKD+BTKD, whose learnable temperature's
    gradient is averaged over the processes; MLKD+BTKD, whose strong view each process draws for its
    share and whose relation terms span the global batch) under torchrun, 2 processes x batch 8, against one
    process with batch 16 on the same global batches (the student has no BatchNorm, whose
    statistics DDP keeps per process)."""
    import json
    import subprocess
    import sys

    import yaml

    from btkd.config import load_config
    from btkd.engine import Trainer

    data = {"name": "synthetic", "options": {"size": 96, "num_classes": 5, "image_size": 8, "prototypes": True},
            "eval_batch_size": 40}
    teacher = load_config({"name": "teacher", "output_dir": str(tmp_path), "data": {**data, "batch_size": 16},
                           "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False},
                           "model": {"student": "convnet", "student_options": {"width": 4}},
                           "distill": {"method": "ce"}})
    Trainer(teacher, echo=lambda *_: None).fit()
    student = {"output_dir": str(tmp_path), "optim": {"epochs": 2, "milestones": []}, "runtime": {"progress": False},
               "model": {"student": "mlp", "teacher": "convnet", "teacher_options": {"width": 4},
                         "teacher_checkpoint": str(tmp_path / "teacher" / "last.safetensors")},
               "distill": {"method": method, "btkd": {"enabled": True}}}
    Trainer(load_config({**student, "name": "one", "data": {**data, "batch_size": 16}}), echo=lambda *_: None).fit()
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump({**student, "name": "two", "data": {**data, "batch_size": 8}}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "btkd.cli",
           "distill", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("one", "two")]
    keys = ("loss_total", "loss_ce", "loss_distill_right", "loss_distill_rectified", "n_rectified", "frac_wrong",
            "train_acc", "test_acc", "samples")
    for one, two in zip(*read):
        for k in keys:
            # CTKD distils at a temperature near 16: its KL is a small difference of large terms, and
            # float32 rounding that differs with the batch size shows at 1e-4 (exact in float64 above)
            assert two[k] == pytest.approx(one[k], rel=1e-5 if method == "kd" else 1e-3, abs=1e-6), (one["epoch"], k)


def test_two_nodes_of_one_process_each_match_one_process(tmp_path):
    """Multi-node torchrun, two "nodes" on this machine (gloo over the loopback, c10d rendezvous):
    rank 0 alone writes the run folder, and the run equals one process with the same global batch."""
    import json
    import socket
    import subprocess
    import sys

    import yaml

    from btkd.config import load_config
    from btkd.engine import Trainer

    data = {"name": "synthetic", "options": {"size": 64, "num_classes": 4, "image_size": 8, "prototypes": True},
            "global_batch_size": 16, "eval_batch_size": 32}
    base = {"output_dir": str(tmp_path), "optim": {"epochs": 2, "milestones": []}, "runtime": {"progress": False},
            "model": {"student": "mlp"}, "distill": {"method": "ce"}, "data": data}
    Trainer(load_config({**base, "name": "one"}), echo=lambda *_: None).fit()
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump({**base, "name": "two"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=btkd-test", "-m", "btkd.cli", "train", str(cfg)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-2000:]
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["batch_size_per_process"] == 8 and meta["effective_batch_size"] == 16
    read = [[json.loads(line) for line in (tmp_path / n / "log.jsonl").read_text().splitlines()] for n in ("one", "two")]
    for one, two in zip(*read):
        for k in ("loss_total", "train_acc", "test_acc", "samples"):
            assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), (one["epoch"], k)


def test_epoch_order_shares_one_permutation_among_processes():
    from btkd.data.imagefolder import EpochOrder

    one = EpochOrder(10, seed=3, rank=0, world_size=1)
    ranks = [EpochOrder(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for o in [one] + ranks:
            o.set_epoch(epoch)
        whole, a, b = list(one), list(ranks[0]), list(ranks[1])
        assert len(a) == len(b) == 5 and sorted(a + b) == sorted(whole)
        # batch i of the single process (batch 4) = batch i of each process (batch 2), interleaved
        assert sorted(whole[:4]) == sorted(a[:2] + b[:2])
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first, "a new order every epoch"
    ev = [EpochOrder(5, shuffle=False, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert list(ev[0]) == [0, 2, 4] and list(ev[1]) == [1, 3], "evaluation keeps every image"


def test_torchrun_on_an_image_tree_with_subsets(tmp_path):
    import json
    import subprocess
    import sys

    import yaml
    from trees import random_image_tree

    random_image_tree(tmp_path / "tree", {"train": 8, "val": 3})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tree", "output_dir": str(tmp_path), "distill": {"method": "ce"},
        "model": {"student": "convnet", "student_options": {"width": 4}},
        "data": {"name": "imagefolder", "root": str(tmp_path / "tree"), "image_size": 8, "workers": 0,
                 "global_batch_size": 4, "eval_batch_size": 2, "train_subset": 12, "test_subset": 4},
        "optim": {"epochs": 1, "milestones": []}, "runtime": {"progress": False}}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "btkd.cli", "train", str(cfg)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "tree" / "meta.json").read_text())
    assert (meta["train_size"], meta["test_size"], meta["world_size"]) == (12, 4, 2)
    log = [json.loads(line) for line in (tmp_path / "tree" / "log.jsonl").read_text().splitlines()]
    assert log[0]["samples"] == 12, "both processes' shares of the 12-image subset"


def test_a_process_leaves_its_process_group_when_the_command_ends(tmp_path):
    """btkd's main leaves the group it joined: exiting inside one can abort in gloo's threads."""
    from btkd.engine import distributed

    assert distributed.leave() is False  # no group: nothing to do
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    assert tdist.is_initialized()
    assert distributed.leave() is True
    assert not tdist.is_initialized()


@pytest.mark.parametrize("argv, code", [(["methods"], 0), (["configs", "no/such/config"], 2)])
def test_a_command_in_a_process_group_exits_with_its_code_after_leaving_it(tmp_path, argv, code):
    """Under torchrun the CLI leaves the group and exits at once with the command's code, its output
    flushed, skipping the interpreter's teardown (where gloo's threads may abort the process)."""
    import subprocess
    import sys

    script = (f"import torch.distributed as d; d.init_process_group('gloo', init_method='file://{tmp_path / 'init'}', "
              f"rank=0, world_size=1); from btkd.cli import main; main({argv!r}); print('not reached')")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-1000:]
    assert "not reached" not in proc.stdout
    assert ("kd:" in proc.stdout) if code == 0 else ("no/such/config" in proc.stderr)


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 but RANK=None: a process group needs 0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"WORLD_SIZE=2 but RANK=2"),
    ({"WORLD_SIZE": "abc"}, r"torchrun's environment is not integers: .*'WORLD_SIZE': 'abc'"),
])
def test_a_torchrun_environment_that_cannot_be_is_named(monkeypatch, env, match):
    from btkd.engine import distributed

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        distributed.init()
    assert not tdist.is_initialized()
