"""The shared-teacher training step (the engine's hot path) on CPU."""

import copy

import pytest
import torch
from torch import nn

from btkd import BTKD, Distill
from btkd.engine.step import TrainStep


def models(seed=0):
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval().requires_grad_(False)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    return teacher, student


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(n)]


def test_two_students_sharing_a_teacher_train_as_if_alone():
    teacher, a = models()
    b = copy.deepcopy(a)
    losses = [BTKD("kd", ce_weight=0.1, kd_weight=0.9, validate=False), Distill("dkd", validate=False, warmup=2)]
    grid = TrainStep([a, b], [sgd(a), sgd(b)], losses, teacher, epochs=4)
    alone = []
    for loss in losses:
        _, s = models()
        alone.append((s, TrainStep([s], [sgd(s)], [loss], teacher, epochs=4)))
    for epoch in range(2):
        grid.set_epoch(epoch)
        for _, step in alone:
            step.set_epoch(epoch)
        for x, y in batches():
            grid(x, y)
            for _, step in alone:
                step(x, y)
    for k, (s, step) in enumerate(alone):
        for p, q in zip(grid.students[k].parameters(), s.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        names, packed = grid.metric_tensor(k)
        names_alone, packed_alone = step.metric_tensor(0)
        assert names == names_alone
        torch.testing.assert_close(packed, packed_alone, rtol=0, atol=0)


def test_step_matches_the_loss_module_called_directly():
    teacher, student = models()
    reference = copy.deepcopy(student)
    loss = BTKD("kd", schedule="cos2_iter", validate=False)
    step = TrainStep([student], [sgd(student)], [loss], teacher, epochs=3)
    opt = sgd(reference)
    totals = []
    for i, (x, y) in enumerate(batches()):
        epoch = 1 + i / 4
        step.set_epoch(epoch)
        step(x, y)
        terms = loss(reference(x), teacher(x), y, epoch=epoch, epochs=3)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        totals.append(terms["total"].item() * len(y))
    for p, q in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    names, packed = step.metric_tensor(0)
    assert packed[names.index("total")].item() == pytest.approx(sum(totals), rel=1e-5)
    assert packed[len(names)].item() == 32  # samples seen
    # the weights held for a captured graph follow the per-iteration schedule
    assert step.weights[0]["beta"].item() == pytest.approx(loss.beta(1.75, 3))
    step.reset_metrics()
    assert step.metric_tensor(0)[1].abs().sum().item() == 0


def test_lr_and_errors():
    teacher, student = models()
    opt = torch.optim.SGD(student.parameters(), lr=torch.tensor(0.1))
    step = TrainStep([student], [opt], [None], None, epochs=1)
    step.set_lr(0.01)
    assert opt.param_groups[0]["lr"].item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="CUDA"):
        TrainStep([student], [opt], [None], None, epochs=1, cuda_graph=True)
    with pytest.raises(ValueError, match="one optimizer and one loss per student"):
        TrainStep([student], [], [None], None, epochs=1)


def test_fold_batchnorm_keeps_the_function_and_removes_bn():
    from btkd.engine.fusion import fold_batchnorm
    from btkd.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10).eval()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    vgg = build_model("vgg8", num_classes=10).eval()
    with pytest.warns(UserWarning, match="folding skipped"):
        assert fold_batchnorm(vgg, x) is vgg  # untraceable: returned unchanged


def test_compiling_the_losses_of_many_hosts_keeps_each_one_compiled():
    """Each loss of another host is one more compiled version of the same `compute`: a bench of 12
    hosts must not pass dynamo's recompile limit (8), past which the rest would run uncompiled."""
    import torch._dynamo.config as dynamo

    # dynamo's own patch: monkeypatch's undo deletes a module attribute it did not find in the module's
    # __dict__, and a deleted dynamo setting stays hidden (every later compile in the session fails)
    with dynamo.patch(recompile_limit=8):
        students = [nn.Linear(4, 3) for _ in range(12)]
        TrainStep(students, [sgd(s) for s in students], [Distill("kd", tau=1.0 + i) for i in range(12)],
                  nn.Linear(4, 3), epochs=1, compile_loss=True)
        assert dynamo.recompile_limit >= 12


class _Tied(nn.Module):
    """A teacher whose every row ties classes 0 and 1 for the top logit."""

    def forward(self, x):
        return torch.tensor([2.0, 2.0, 0.0, 0.0, 0.0]).expand(x.shape[0], 5)


def test_the_teacher_correct_count_follows_the_split_on_a_tie():
    # A label tied for the top logit is right for BTKD's split; the logged teacher accuracy (and so
    # frac_wrong) must count it the same way, or n_rectified and frac_wrong disagree (bf16 ties).
    _, student = models()
    step = TrainStep([student], [sgd(student)], [BTKD("kd", validate=False)], _Tied(), epochs=1)
    x = torch.randn(4, 3, 2, 2)
    y = torch.tensor([1, 1, 0, 3])  # right, right (label 1 ties the top), right, wrong
    step(x, y)
    names, packed = step.metric_tensor(0)
    samples, _, teacher_correct = packed[-3:].tolist()
    assert (samples, teacher_correct) == (4.0, 3.0)
    assert packed[names.index("n_wrong")].item() == 1.0


def test_a_fold_that_changes_the_function_is_refused(monkeypatch):
    import torch.fx.experimental.optimization as fx_opt

    from btkd.engine.fusion import fold_batchnorm, is_folded

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    real_fuse = fx_opt.fuse

    def off_by(scale):
        def fuse(m):
            folded = real_fuse(m)
            with torch.no_grad():
                folded.get_submodule("0").weight.mul_(scale)  # e.g. a fold that forgot BN's eps
            return folded
        return fuse

    monkeypatch.setattr(fx_opt, "fuse", off_by(1.01))  # a 1% error: far above rtol=1e-3
    with pytest.warns(UserWarning, match="relative error"):
        assert fold_batchnorm(model, x) is model
    monkeypatch.setattr(fx_opt, "fuse", off_by(1 + 1e-5))  # rounding-sized: kept
    assert is_folded(fold_batchnorm(model, x))


def _all_losses():
    losses = [None]
    for host in ("kd", "dkd", "dist", "nkd", "ctkd", "kd_ls", "dkd_ls", "mlkd"):
        losses += [BTKD(host, validate=False), Distill(host, validate=False)]
    return losses + [BTKD("kd", rectify="reweight", validate=False), BTKD("kd", rectify="none", validate=False),
                     Distill("rld", validate=False), Distill("sld", validate=False)]


def test_a_training_step_makes_no_host_sync():
    # The engine's promise (README "Performance"): nothing synchronises with the host until the epoch's
    # end. BTKD's split is two 0/1 masks, not indexing; weights, lr and metrics stay device tensors. A
    # step of every host, two lanes, two-view students included, after a first step (which allocates).
    from host_syncs import HostSyncs

    teacher, _ = models()
    losses = _all_losses()
    students = [models()[1] for _ in losses]
    params = [list(s.parameters()) + (list(loss.parameters()) if loss is not None else [])
              for s, loss in zip(students, losses)]
    step = TrainStep(students, [torch.optim.SGD(p, lr=0.1, momentum=0.9) for p in params], losses, teacher,
                     epochs=3, lanes=[k % 2 for k in range(len(losses))])
    step.set_epoch(1)
    (x, y), (x2, y2) = batches(2)
    xs, ys = [(x, x.flip(0)), (x2, x2.flip(0))], [y, y2]
    step(xs, ys)
    with HostSyncs() as syncs:
        step(xs, ys)
        step.set_epoch(1.5)  # a per-iteration schedule's update, between steps
        step.set_lr(0.05)
        step(xs, ys)
    assert syncs.events == []


def _recorder(seen, key):
    def hook(module, inputs, out):
        seen.setdefault(key, out.detach())  # returns None: the output is unchanged
    return hook


def test_the_packed_metrics_are_the_term_by_term_float32_sums():
    # The step adds all of a batch's terms and counts with one stack, product and sum: the same sums,
    # bit for bit, as adding each term times the batch size (n_wrong, n_rectified as they are) in float32.
    teacher, _ = models()
    losses = [None, Distill("kd", validate=False), BTKD("dkd", warmup=2, validate=False), BTKD("mlkd", validate=False)]
    students = [models()[1] for _ in losses]
    step = TrainStep(students, [sgd(s) for s in students], losses, teacher, epochs=3, lanes=[0, 1, 0, 1])
    expected = [{} for _ in losses]
    seen = {}  # what each student's step computed, and its (weak view's) logits
    for k in range(len(losses)):
        compute = step.computes[k]
        if compute is not None:
            step.computes[k] = lambda *a, _c=compute, _k=k, **kw: seen.setdefault(_k, _c(*a, **kw))
        students[k].register_forward_hook(_recorder(seen, ("logits", k)))
    g = torch.Generator().manual_seed(3)
    for i in range(5):
        n = 8 if i < 4 else 5  # and a last partial batch
        xs = [(torch.randn(n, 3, 2, 2, generator=g), torch.randn(n, 3, 2, 2, generator=g)) for _ in range(2)]
        ys = [torch.randint(0, 5, (n,), generator=g) for _ in range(2)]
        seen.clear()
        step(xs, ys)
        for k, loss in enumerate(losses):
            lane = k % 2
            logits, t = seen[("logits", k)], teacher(xs[lane][0])
            terms = seen[k] if loss is not None else {"ce": torch.nn.functional.cross_entropy(logits, ys[lane])}
            if loss is None:
                terms["total"] = terms["ce"]
            add = {name: v.detach().float() * (1 if name in ("n_wrong", "n_rectified") else n)
                   for name, v in terms.items()}
            add["~samples"] = torch.tensor(float(n))
            add["~correct"] = (logits.argmax(1) == ys[lane]).sum().float()
            add["~teacher"] = (t.gather(1, ys[lane][:, None]) >= t.max(1, keepdim=True).values).sum().float()
            for name, v in add.items():
                expected[k][name] = expected[k][name] + v if name in expected[k] else v
    for k in range(len(losses)):
        names, packed = step.metric_tensor(k)
        keys = sorted(n for n in expected[k] if not n.startswith("~")) + ["~samples", "~correct", "~teacher"]
        assert names == keys[:-3]
        assert torch.equal(packed, torch.stack([expected[k][n] for n in keys])), k


def _lockstep(monkeypatch, losses, epochs=2, steps=3, amp_dtype=None):
    """The same students trained eagerly and replayed from an (emulated) CUDA graph, epoch by epoch with
    the lr and the epoch's weights changed between replays; each epoch's max differences of weights
    and metric sums, per student."""
    from fake_cuda_graph import fake_cuda_graph, graph_step

    def make():
        teacher, _ = models()
        students = [models()[1] for _ in losses]
        params = [list(s.parameters()) + (list(loss.parameters()) if loss is not None else [])
                  for s, loss in zip(students, losses)]
        # fused SGD with a tensor lr, as the trainer's on a GPU (it runs on the CPU too)
        opts = [torch.optim.SGD(p, lr=torch.tensor(0.1), momentum=0.9, weight_decay=5e-4, fused=True) for p in params]
        return TrainStep(students, opts, losses, teacher, epochs=epochs + 1, amp_dtype=amp_dtype,
                         lanes=[k % 2 for k in range(len(losses))])

    diffs = []
    with fake_cuda_graph(monkeypatch):
        eager = make()
        losses[:] = [copy.deepcopy(loss) for loss in losses]  # the graph's own losses (CTKD learns its temperature)
        graph = graph_step(make())
        g = torch.Generator().manual_seed(5)
        for epoch in range(epochs):
            for step in (eager, graph):
                step.set_lr([0.1 * 0.2 ** epoch] * len(losses))
                step.set_epoch(epoch)
            for i in range(steps):
                lanes = min(2, len(losses))
                xs = [(torch.randn(8, 3, 2, 2, generator=g), torch.randn(8, 3, 2, 2, generator=g))
                      for _ in range(lanes)]
                ys = [torch.randint(0, 5, (8,), generator=g) for _ in range(lanes)]
                for step in (eager, graph):
                    if i:
                        step.set_epoch(epoch + i / steps)  # a per-iteration schedule
                    step(xs, ys)
            diffs.append([])
            for k in range(len(losses)):
                a, b = eager.students[k].state_dict(), graph.students[k].state_dict()
                weights = max((a[n].double() - b[n].double()).abs().max().item() for n in a)
                sums = (eager.metric_tensor(k)[1] - graph.metric_tensor(k)[1]).abs().max().item()
                diffs[-1].append((weights, sums))
            for step in (eager, graph):
                step.reset_metrics()
        assert graph.graph.replays == epochs * steps
    return diffs


def test_a_replayed_cuda_graph_trains_as_the_eager_step(monkeypatch):
    # The CUDA graph path runs only on a GPU: here its capture and replays are emulated on the CPU
    # (tests/fake_cuda_graph.py), so a value baked in at the capture (a float lr, beta or warm-up
    # scale, a host's epoch switch, a tensor made during the step) shows as a difference from eager.
    losses = [None, Distill("kd", validate=False), Distill("dkd", warmup=2, validate=False),
              BTKD("kd", schedule="cos2_iter", validate=False), BTKD("dkd", warmup=1, validate=False),
              BTKD("ctkd", validate=False), BTKD("kd", rectify="reweight", validate=False),
              BTKD("mlkd", validate=False), Distill("sld", student_from=1, validate=False)]
    for epoch in _lockstep(monkeypatch, losses):
        assert epoch == [(0.0, 0.0)] * len(losses)
    # and the emulation sees a learning rate that a replay would not: one set as a new tensor
    monkeypatch.setattr(TrainStep, "set_lr", lambda self, lr: [g.update(lr=torch.tensor(lr[0]))
                                                               for o in self.optimizers for g in o.param_groups])
    first, second = _lockstep(monkeypatch, [Distill("kd", validate=False)])
    assert first == [(0.0, 0.0)] and second[0][0] > 1e-4


def test_under_bf16_the_eager_step_computes_what_the_graph_replays(monkeypatch):
    # Autocast's weight cache (off while capturing) made an eager step add a two-view student's
    # weight gradients in bf16 through one cached cast, the graph in float32: the eager fallback of a
    # GPU window then trained another function.
    losses = [BTKD("mlkd", validate=False), Distill("sld", validate=False), Distill("kd", validate=False)]
    for epoch in _lockstep(monkeypatch, losses, amp_dtype=torch.bfloat16):
        assert epoch == [(0.0, 0.0)] * len(losses)


def test_a_graph_refuses_a_batch_of_another_shape(monkeypatch):
    # copy_ into the captured input broadcasts: a last batch of one image would silently train as 8
    # copies of it. The training loaders drop the last partial batch; a loop of one's own may not.
    from fake_cuda_graph import fake_cuda_graph, graph_step

    teacher, student = models()
    opt = torch.optim.SGD(student.parameters(), lr=torch.tensor(0.1), momentum=0.9, fused=True)
    with fake_cuda_graph(monkeypatch):
        step = graph_step(TrainStep([student], [opt], [Distill("kd", validate=False)], teacher, epochs=1))
        (x, y), = batches(1)
        step(x, y)
        with pytest.raises(ValueError, match="batch shapes it captured.*full batch"):
            step(x[:1], y[:1])


def test_the_gpu_preflight_passes_the_step_and_names_a_student_that_a_replay_trains_otherwise(monkeypatch, capsys):
    # benchmarks/gpu_preflight.py, a GPU window's first check, run here on the emulated graph
    from fake_cuda_graph import fake_cuda_graph, graph_step
    from repo_scripts import load_script

    preflight = load_script("benchmarks/gpu_preflight.py")
    monkeypatch.setattr(preflight, "CLASSES", 10)
    monkeypatch.setattr(preflight, "BATCH", 8)
    monkeypatch.setattr(preflight, "SIZE", 6)
    monkeypatch.setattr(preflight, "build_model", lambda name, num_classes: nn.Sequential(  # small for the CPU
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, num_classes)))

    def cpu_step(*args, cuda_graph=False, **kwargs):
        step = TrainStep(*args, **kwargs)
        return graph_step(step) if cuda_graph else step

    monkeypatch.setattr(preflight, "TrainStep", cpu_step)
    cpu = torch.device("cpu")
    with fake_cuda_graph(monkeypatch):
        assert preflight.compare("fp32", cpu, tol=1e-9) is None
        real_compile = torch.compile  # the compiled pass, with dynamo's tracing but no code generation
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager"))
        assert preflight.compare("bf16, compiled", cpu, amp=torch.bfloat16, channels_last=True, compile_=True,
                                 tol=1e-9) is None
        assert capsys.readouterr().out.count("-> ok") == 2
        # a learning rate set as a new tensor: the graph keeps the one it captured
        monkeypatch.setattr(TrainStep, "set_lr", lambda self, lr: [g.update(lr=torch.tensor(lr))
                                                                   for o in self.optimizers for g in o.param_groups])
        monkeypatch.setattr(preflight, "losses", lambda few=False: [None, Distill("kd", validate=False)])
        problem = preflight.compare("fp32", cpu)
    assert problem.startswith("fp32: student 0 (CE) after epoch 2") and "fix the fast path" in problem
    assert "-> FAILED" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests above emulate its graph)")
def test_on_a_gpu_the_replayed_cuda_graph_trains_as_the_eager_step():
    from repo_scripts import load_script

    assert load_script("benchmarks/gpu_preflight.py").main([]) == 0
