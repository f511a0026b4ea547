"""Training several independent seeds of one model: pure jitted steps, device-resident data.

Seed ``i`` of a run with base seed ``b`` uses the key ``jax.random.key(b + i)`` for both its initialisation and
its data order, so seed ``i`` of an ``n_seeds=N`` run equals a single-seed run with ``seed=b+i``. How the seeds
are packed on the device (a loop or ``vmap``) comes from :mod:`equivar.execution`; both give the same models up
to float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from pydantic import Field
from tqdm.auto import tqdm

from equivar.errors import ConfigError
from equivar.execution import ExecutionPlan, replicate, shard_seeds
from equivar.introspect import split_variables, to_inference
from equivar.schema import Float, NonNegativeInt, Options, PositiveInt, check_keywords
from equivar.transforms import INTEGER_MODES, ShiftMode, shift_each

log = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "lion": optax.lion,
}
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop", "lion"]


class TrainOptions(Options):
    """``train.*``: how every seed is trained. In a run, ``epochs``, ``batch_size`` and ``learning_rate`` follow
    the dataset's recipe (``dataset.*``, conf/config.yaml) unless overridden."""

    epochs: PositiveInt = Field(10, description="passes over the training set")
    batch_size: PositiveInt = Field(128, description="examples per step")
    optimizer: OptimizerName = Field("adam", description="an optax optimizer")
    learning_rate: Float = Field(1e-3, gt=0, description="the optimizer's step size")
    optimizer_options: dict[str, Any] = Field({}, description="further keyword arguments of the optax optimizer "
                                                              "(checked against its signature)")
    augment_shift: NonNegativeInt = Field(0, description="> 0: shift every training example by a random offset "
                                                         "in [-a, a] per axis")
    augment_mode: ShiftMode = Field("roll", description="how augmentation shifts")
    min_steps: NonNegativeInt = Field(0, description="train at least this many steps (more epochs for small "
                                                     "training sets)")
    heldout_examples: NonNegativeInt = Field(1000, description="test examples whose loss and accuracy are recorded "
                                                               "after every epoch (the held-out curve; 0: none); "
                                                               "nothing is chosen by them")
    tensorboard: bool = Field(True, description="write the curves as TensorBoard events into <run>/tensorboard/")

    def epochs_for(self, n_examples: int) -> int:
        steps_per_epoch = max(1, n_examples // self.batch_size)
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))

    def check_optimizer(self) -> None:
        """``optimizer_options`` against the optax optimizer's signature (nearest name suggested), then one
        update on a tiny parameter, so bad values fail here and not in the middle of a compiled step."""
        fn = OPTIMIZERS[self.optimizer]
        check_keywords(fn, self.optimizer_options, f"train.optimizer_options (optax.{fn.__name__})",
                       skip=("learning_rate",))

        def first_update(opts: dict[str, Any]) -> bool:
            tx = fn(learning_rate=self.learning_rate, **opts)
            params = {"w": jnp.ones(2)}
            updates, _ = tx.update(params, tx.init(params), params)
            return all(bool(jnp.isfinite(u).all()) for u in updates.values())

        for key, value in [(None, None), *self.optimizer_options.items()]:  # each option alone: it is named
            try:
                finite = first_update(self.optimizer_options if key is None else {key: value})
            except Exception as err:  # optax's own complaint about a value, as one line naming the key
                if key is None:
                    continue
                raise ConfigError(f"train.optimizer_options.{key}={value!r} is refused by optax.{fn.__name__}: "
                                  f"{_first_line(err)}") from None
            if not finite:
                where = "train.optimizer_options" + ("" if key is None else f".{key}={value!r}")
                raise ConfigError(f"{where} makes optax.{fn.__name__}'s first update non-finite")
        try:
            first_update(self.optimizer_options)
        except Exception as err:
            raise ConfigError(f"train.optimizer_options={self.optimizer_options} together are refused by "
                              f"optax.{fn.__name__}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def make_optimizer(spec: TrainOptions) -> optax.GradientTransformation:
    return OPTIMIZERS[spec.optimizer](learning_rate=spec.learning_rate, **spec.optimizer_options)


class TrainState(NamedTuple):
    params: nnx.State
    model_state: nnx.State  # every non-parameter variable (BatchNorm statistics, Dropout's RNG counters, ...)
    opt_state: Any
    step: jax.Array  # steps taken (int32)
    rng: jax.Array  # key data for this seed's augmentation draws (uint32)
    diverged_at: jax.Array  # the first step whose loss or gradients were not finite; -1 while training is healthy


Batch = tuple[jax.Array, jax.Array]


def seed_keys(base_seed: int, n_seeds: int) -> jax.Array:
    """One independent key per seed: ``key(base_seed + i)``."""
    return jnp.stack([jax.random.key(base_seed + i) for i in range(n_seeds)])


def _init_key(key: jax.Array) -> jax.Array:
    return jax.random.fold_in(key, 0)


def _order_key(key: jax.Array, epoch: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(key, 1), epoch)


def init_states(build: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                keys: jax.Array) -> tuple[nnx.GraphDef, TrainState]:
    """Initialises one model and optimizer state per key, stacked on a leading seed axis.

    Init is jitted: un-jitted Flax init costs seconds per process.
    """
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(nnx.Rngs(0))))

    def init_one(key: jax.Array) -> TrainState:
        _, params, model_state = split_variables(build(nnx.Rngs(_init_key(key))))
        return TrainState(params, model_state, tx.init(params), jnp.zeros((), jnp.int32),
                          jax.random.key_data(jax.random.fold_in(key, 2)), jnp.full((), -1, jnp.int32))

    return graphdef, jax.jit(jax.vmap(init_one))(keys)


def augmentation_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The key of one seed's augmentation draws at ``step`` (``rng``: the seed's key data)."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng), step)


def augmentation_offsets(key: jax.Array, n: int, rank: int, augment_shift: int, mode: str) -> jax.Array:
    """One random translation per example, ``(n, rank)``: integers uniform in ``[-a, a]`` for the integer
    shift modes, reals uniform in ``[-a, a]`` for the sub-pixel ones."""
    if mode in INTEGER_MODES:
        return jax.random.randint(key, (n, rank), -augment_shift, augment_shift + 1)
    return jax.random.uniform(key, (n, rank), minval=-augment_shift, maxval=augment_shift)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, augment_shift: int = 0,
                    augment_mode: str = "roll", guard: bool = True, check_parameters: bool = True
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure step: ``train_step(state, (x, y)) -> (state, {"loss", "accuracy"})``.

    Divergence guard: when the loss, a gradient or (``check_parameters``) an updated parameter is NaN or
    infinite, the step records its index in ``diverged_at`` and keeps the previous parameters; from then on the
    seed is frozen (no host sync needed, so it works the same inside a loop, ``vmap`` or ``scan``).

    Without ``check_parameters`` the step costs what an unguarded step costs: it freezes a seed on a non-finite
    loss, and where a gradient element is NaN or infinite it makes that parameter NaN instead of checking every
    gradient (also in a seed frozen earlier). A parameter made non-finite by the optimizer's own update (finite
    gradients, e.g. a zero ``eps``) also goes through. :class:`SeedTrainer` runs this fast step and, at the end
    of each epoch, replays with the full check any epoch in which a seed froze or a parameter went non-finite,
    and gives a seed frozen before the epoch its parameters back, so what it returns is the full check's.
    """

    def loss_fn(params: nnx.State, model_state: nnx.State, x: jax.Array, y: jax.Array):
        # Training mode (batch statistics, dropout on). Fresh Variables (copy): the layers may update their state
        # (BatchNorm statistics, RNG counters) inside this trace.
        model = nnx.merge(graphdef, params, model_state, copy=True)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, split_variables(model)[2])

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        x, y = batch
        if augment_shift > 0:  # a fresh random translation per example and step, from this seed's key
            key = augmentation_key(state.rng, state.step)
            x = shift_each(x, augmentation_offsets(key, x.shape[0], x.ndim - 2, augment_shift, augment_mode),
                           augment_mode)
        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        accuracy = (logits.argmax(-1) == y).mean()
        if not guard:  # only for measuring what the guard costs (python -m equivar.tools.bench)
            params = optax.apply_updates(state.params, updates)
            return (TrainState(params, model_state, opt_state, state.step + 1, state.rng, state.diverged_at),
                    {"loss": loss, "accuracy": accuracy})
        if check_parameters:
            # A NaN or inf anywhere makes a plain sum non-finite: one read of each array, no squares (a sum of
            # finite values overflows later than the squared norm did).
            total = loss + _tree_sum(grads)
            params = optax.apply_updates(state.params, updates)
            finite = jnp.isfinite(total + _tree_sum(params))
            healthy = finite & (state.diverged_at < 0)
            params = jax.tree.map(lambda a, b: jnp.where(healthy, a, b), params, state.params)
        else:
            # Only the loss decides here: summing every gradient cost 4-9 % of an MLP step. Where a gradient
            # element is NaN or infinite, its parameter becomes NaN instead, so the check at the end of the epoch
            # finds it (and restores a seed frozen before the epoch). The select comes after the update and
            # reads nothing else: inside the update, or with the seed's frozen flag in it, it changed how XLA
            # fuses the optimizer's update, and with that the rounding of every trained model.
            finite = jnp.isfinite(loss)
            healthy = finite & (state.diverged_at < 0)
            # p + 0 is p: a masked update fuses into the addition, where a select re-reads both parameter sets
            params = optax.apply_updates(state.params, jax.tree.map(
                lambda u: jnp.where(healthy, u, jnp.zeros_like(u)), updates))
            params = jax.tree.map(lambda p, g: jnp.where(jnp.isfinite(g), p, jnp.nan), params, grads)
        # Only the parameters need keeping: once a seed diverges it never updates again, so its optimizer
        # state may go non-finite unguarded.
        model_state = jax.tree.map(lambda a, b: jnp.where(healthy, a, b) if jnp.issubdtype(a.dtype, jnp.floating)
                                   else a, model_state, state.model_state)
        diverged_at = jnp.where((state.diverged_at < 0) & ~finite, state.step, state.diverged_at)
        new_state = TrainState(params, model_state, opt_state, state.step + 1, state.rng, diverged_at)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return train_step


def parameters_finite(state: TrainState) -> jax.Array:
    """Whether every parameter of one seed is finite (a scalar)."""
    return jnp.isfinite(_tree_sum(state.params))


def _tree_sum(tree: Any) -> jax.Array:
    """The sum of every element of every leaf: non-finite exactly when some element is NaN or infinite (or the
    finite values overflow), at one read of each array."""
    return sum((jnp.sum(leaf) for leaf in jax.tree.leaves(tree)), start=jnp.zeros((), jnp.float32))


def epoch_order(key: jax.Array, n_examples: int, batch_size: int) -> jax.Array:
    """A fresh permutation cut into full batches: ``(n_examples // batch_size, batch_size)`` indices."""
    steps = n_examples // batch_size
    return jax.random.permutation(key, n_examples)[: steps * batch_size].reshape(steps, batch_size)


def take_seed(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], tree)


def stack_seeds(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


@dataclasses.dataclass
class History:
    """Mean training loss and accuracy per seed and epoch: arrays of shape ``(n_seeds, epochs)``."""

    loss: np.ndarray
    accuracy: np.ndarray
    seconds: float
    diverged_at: np.ndarray  # per seed: the first non-finite step, or -1
    steps_per_epoch: int = 0
    heldout_loss: np.ndarray | None = None  # (n_seeds, epochs) on the held-out examples, inference mode
    heldout_accuracy: np.ndarray | None = None
    heldout_examples: int = 0
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)  # per epoch: the training steps only

    def steady_epoch_seconds(self) -> float | None:
        """Seconds per epoch of training steps once compiled: the median epoch after the first (which compiles
        the step), or the only one; held-out evaluation is not counted."""
        times = self.epoch_seconds[1:] or self.epoch_seconds
        return float(np.median(times)) if times else None

    def status(self) -> list[str]:
        """Per seed: ``ok`` or ``diverged at step S (epoch E)``."""
        out = []
        for step in self.diverged_at:
            if step < 0:
                out.append("ok")
            else:
                epoch = int(step) // self.steps_per_epoch + 1 if self.steps_per_epoch else "?"
                out.append(f"diverged at step {int(step)} (epoch {epoch})")
        return out


class SeedTrainer:
    """Trains a stack of seeds of one model with one compiled step, packed as the plan says."""

    def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, plan: ExecutionPlan,
                 *, max_traces: int | None = None, augment_shift: int = 0, augment_mode: str = "roll",
                 guard: bool = True):
        self.plan = plan
        self.guard = guard
        # The fast step every step (it checks the loss, marks a bad gradient), the full check to replay an epoch
        # in which a seed froze or a parameter went non-finite (make_train_step); without a guard both are the
        # unguarded step.
        train_step = make_train_step(graphdef, tx, augment_shift, augment_mode, guard, check_parameters=False)
        full_step = make_train_step(graphdef, tx, augment_shift, augment_mode, guard)

        def gather_and_step(state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array):
            return train_step(state, (x[idx], y[idx]))

        def gather_and_full_step(state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array):
            return full_step(state, (x[idx], y[idx]))

        if max_traces is not None:
            gather_and_step = chex.assert_max_traces(gather_and_step, n=max_traces)

        def scan_steps(state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array):
            """Several steps in one call: ``idx`` is ``(steps, batch)``; metrics come back per step."""
            return jax.lax.scan(lambda s, i: gather_and_step(s, x, y, i), state, idx)

        logits = make_logits(graphdef)

        def heldout_sums(state: TrainState, x: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
            """Summed loss and correct predictions over a (padded) chunk, in inference mode."""
            out = logits((state.params, state.model_state), x)
            loss = optax.softmax_cross_entropy_with_integer_labels(out, y)
            return jnp.stack([(loss * weight).sum(), ((out.argmax(-1) == y) * weight).sum()])

        if plan.seed_packing == "vmap":
            self.heldout = jax.jit(jax.vmap(heldout_sums, in_axes=(0, None, None, None)))
            self.step = jax.jit(jax.vmap(gather_and_step, in_axes=(0, None, None, 0)))
            self.full_step = jax.jit(jax.vmap(gather_and_full_step, in_axes=(0, None, None, 0)))
            self.parameters_finite = jax.jit(jax.vmap(parameters_finite))
            self.multi_step = jax.jit(jax.vmap(scan_steps, in_axes=(0, None, None, 0)))
            self.order = jax.jit(jax.vmap(epoch_order, in_axes=(0, None, None)), static_argnums=(1, 2))
        else:
            self.heldout = jax.jit(heldout_sums)
            self.step = jax.jit(gather_and_step)
            self.full_step = jax.jit(gather_and_full_step)
            self.parameters_finite = jax.jit(parameters_finite)
            self.multi_step = jax.jit(scan_steps)
            self.order = jax.jit(epoch_order, static_argnums=(1, 2))

    def fit(self, states: TrainState, x: jax.Array, y: jax.Array, keys: jax.Array, spec: TrainOptions,
            label: str = "model", heldout: tuple[np.ndarray, np.ndarray] | None = None,
            on_epoch: EpochCallback | None = None) -> tuple[TrainState, History]:
        """Trains every seed for ``spec.epochs_for(n)`` epochs; returns the stacked states and per-epoch history.

        Args:
            heldout: examples evaluated (inference mode) after every epoch: the held-out curve.
            on_epoch: called after every epoch with its index and this epoch's per-seed numbers
                (``train_loss``, ``train_accuracy`` and, with ``heldout``, ``heldout_loss``,
                ``heldout_accuracy``): where a run writes its live curves (TensorBoard).
        """
        start = time.perf_counter()
        n_seeds = keys.shape[0]
        chunks = _heldout_chunks(heldout)
        if self.plan.seed_packing == "vmap":
            mesh = self.plan.seed_mesh(n_seeds)
            states, keys = shard_seeds((states, keys), mesh)
            x, y = replicate((x, y), mesh)
            chunks = [replicate(c, mesh) for c in chunks]
            [(states, loss, acc, held)], epoch_seconds = self._fit_groups([(states, x, y, keys)], spec, label,
                                                                         [chunks], on_epoch)
        else:  # one group per seed, each on its device; their steps interleave so the devices work side by side
            n = int(y.shape[0])
            calls = spec.epochs_for(n) * -(-(n // spec.batch_size) // self.plan.steps_per_call)
            devices = self.plan.seed_devices(n_seeds, calls)
            data = {d: jax.device_put((x, y), d) for d in devices}
            held_data = {d: jax.device_put(chunks, d) for d in devices}
            groups, group_chunks = [], []
            for s in range(n_seeds):
                device = devices[s % len(devices)]
                groups.append((jax.device_put(take_seed(states, s), device), *data[device],
                               jax.device_put(keys[s], device)))
                group_chunks.append(held_data[device])
            results, epoch_seconds = self._fit_groups(groups, spec, label if n_seeds == 1 else
                                                      f"{label} {n_seeds} seeds", group_chunks, on_epoch)
            home = devices[0]
            states = stack_seeds([jax.device_put(r[0], home) for r in results])
            loss = np.stack([r[1] for r in results])
            acc = np.stack([r[2] for r in results])
            held = np.stack([r[3] for r in results])
        jax.block_until_ready(states)
        held = held.reshape(n_seeds, 2, -1)
        history = History(loss=loss.reshape(n_seeds, -1), accuracy=acc.reshape(n_seeds, -1),
                          seconds=time.perf_counter() - start,
                          diverged_at=np.asarray(states.diverged_at).reshape(n_seeds),
                          steps_per_epoch=int(y.shape[0]) // spec.batch_size,
                          heldout_loss=held[:, 0] if heldout is not None else None,
                          heldout_accuracy=held[:, 1] if heldout is not None else None,
                          heldout_examples=0 if heldout is None else int(len(heldout[1])),
                          epoch_seconds=epoch_seconds)
        if (history.diverged_at >= 0).any():
            log.warning("%s: %s", label, "; ".join(f"seed {i}: {s}" for i, s in enumerate(history.status())
                                                   if s != "ok"))
        log.info("%s: trained %d seed(s) x %d epochs in %.1fs; final loss %s, train accuracy %s", label,
                 n_seeds, spec.epochs_for(int(y.shape[0])), history.seconds,
                 np.array2string(history.loss[:, -1], formatter={"float_kind": lambda v: f"{v:.3g}"}),
                 np.round(history.accuracy[:, -1], 4))
        return states, history

    def _heldout(self, state: TrainState, chunks: list[tuple[jax.Array, jax.Array, jax.Array]]) -> np.ndarray:
        """``[mean loss, accuracy]`` on the held-out chunks (per seed under vmap: shape ``(seeds, 2)``); NaN for a
        seed that has diverged (its frozen parameters are not the model the curve follows)."""
        sums = sum(np.asarray(self.heldout(state, *c)) for c in chunks)
        count = sum(float(np.asarray(c[2]).sum()) for c in chunks)
        out = np.asarray(sums, np.float64) / count
        diverged = np.asarray(state.diverged_at) >= 0
        return np.where(diverged[..., None], np.nan, out) if out.ndim > 1 else \
            (np.full_like(out, np.nan) if bool(diverged) else out)

    def _fit_groups(self, groups: list[tuple[TrainState, jax.Array, jax.Array, jax.Array]], spec: TrainOptions,
                    label: str, heldout: list[list[tuple[jax.Array, jax.Array, jax.Array]]],
                    on_epoch: EpochCallback | None
                    ) -> tuple[list[tuple[TrainState, np.ndarray, np.ndarray, np.ndarray]], list[float]]:
        """Trains groups of seeds step by step, each group's step dispatched in turn: one group per seed (loop
        packing, each on its device) or a single group holding every seed (vmap packing, a leading seed axis
        everywhere). A group whose seeds have all diverged stops at the end of that epoch. Also returns each
        epoch's seconds of training steps (the held-out evaluation after it not counted)."""
        n = int(groups[0][2].shape[0])
        epochs = spec.epochs_for(n)
        states = [g[0] for g in groups]
        losses: list[list[np.ndarray]] = [[] for _ in groups]
        accs: list[list[np.ndarray]] = [[] for _ in groups]
        helds: list[list[np.ndarray]] = [[] for _ in groups]  # per epoch: [loss, accuracy] (seeds first under vmap)
        active = list(range(len(groups)))
        chunk = self.plan.steps_per_call
        epoch_seconds: list[float] = []
        for epoch in range(epochs):
            epoch_started, held_seconds = time.perf_counter(), 0.0
            orders = {}
            for i in active:
                key = groups[i][3]
                epoch_keys = jax.vmap(_order_key, in_axes=(0, None))(key, epoch) if key.ndim else \
                    _order_key(key, epoch)
                orders[i] = self.order(epoch_keys, n, spec.batch_size)
                if self.plan.seed_packing != "vmap":
                    # One transfer per epoch: slicing a device array per step would dispatch a computation
                    # per step; a host slice goes in as the step's argument. Under vmap the order stays where
                    # the seeds are (sharded over devices with them).
                    orders[i] = np.asarray(orders[i])
            steps = orders[active[0]].shape[-2]
            epoch_start = {i: states[i] for i in active}  # arrays are immutable: a reference is a snapshot
            step_metrics: dict[int, list] = {i: [] for i in active}
            bar = tqdm(range(steps), desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False,
                       disable=None, unit="step")
            for t in bar:
                if chunk > 1 and t % chunk:
                    continue
                for i in active:
                    _, x, y, _ = groups[i]
                    if chunk == 1:
                        states[i], metrics = self.step(states[i], x, y, orders[i][..., t, :])
                        step_metrics[i].append(metrics)
                    else:
                        # Remainder steps at the end of an epoch run as one shorter scan (one more compile).
                        states[i], metrics = self.multi_step(states[i], x, y, orders[i][..., t:t + chunk, :])
                        step_metrics[i].append(metrics)
            for i in active:
                per_step = chunk == 1  # metrics per step; per scanned call they have a trailing axis of steps
                stacked = jax.tree.map(lambda *m, join=jnp.stack if per_step else jnp.concatenate:
                                       join(m, axis=-1).mean(-1), *step_metrics[i])
                if self.guard:
                    states[i] = _keep_frozen(epoch_start[i], states[i])
                if self.guard and np.any(_went_bad(epoch_start[i], states[i], self.parameters_finite)):
                    # The fast step let a non-finite loss, gradient or update through (it marks a bad gradient
                    # by a NaN parameter): this epoch again, step by step, with the full check, which freezes
                    # the seed at its first bad step.
                    _, x, y, _ = groups[i]
                    states[i], step_metrics[i] = epoch_start[i], []
                    for t in range(steps):
                        states[i], metrics = self.full_step(states[i], x, y, orders[i][..., t, :])
                        step_metrics[i].append(metrics)
                    log.info("%s: a non-finite step in epoch %d; replayed with the full guard", label, epoch + 1)
                    stacked = jax.tree.map(lambda *m: jnp.stack(m, axis=-1).mean(-1), *step_metrics[i])
                losses[i].append(np.asarray(stacked["loss"]))
                accs[i].append(np.asarray(stacked["accuracy"]))
                held_started = time.perf_counter()
                helds[i].append(self._heldout(states[i], heldout[i]) if heldout[i] else
                                np.full((*np.shape(losses[i][-1]), 2), np.nan))
                held_seconds += time.perf_counter() - held_started
            epoch_seconds.append(time.perf_counter() - epoch_started - held_seconds)
            if on_epoch is not None:
                on_epoch(epoch, _epoch_numbers(losses, accs, helds, active, bool(heldout[active[0]])))
            bar.set_postfix(loss=float(np.mean([losses[i][-1] for i in active])),
                            acc=float(np.mean([accs[i][-1] for i in active])))
            bar.close()
            for i in list(active):
                if bool(np.all(np.asarray(states[i].diverged_at) >= 0)):  # every seed here is frozen: stop early
                    pad = epochs - epoch - 1
                    losses[i] += [np.full_like(losses[i][-1], np.nan)] * pad
                    accs[i] += [np.full_like(accs[i][-1], np.nan)] * pad
                    helds[i] += [np.full_like(helds[i][-1], np.nan)] * pad
                    active.remove(i)
            if not active:
                break
        return [(states[i], np.stack(losses[i], axis=-1), np.stack(accs[i], axis=-1),
                 np.stack(helds[i], axis=-1)) for i in range(len(groups))], epoch_seconds


EpochCallback = Callable[[int, dict[str, np.ndarray]], None]


def _went_bad(start: TrainState, end: TrainState, parameters_finite: Callable[[TrainState], jax.Array]
              ) -> np.ndarray:
    """Per seed, whether an epoch of fast steps needs replaying with the full check: a seed that was not frozen
    when the epoch began and now is frozen (a non-finite loss) or has a non-finite parameter (a non-finite
    gradient or update), or both."""
    alive = np.asarray(start.diverged_at) < 0
    return alive & ((np.asarray(end.diverged_at) >= 0) | ~np.asarray(parameters_finite(end)))


def _keep_frozen(start: TrainState, end: TrainState) -> TrainState:
    """``end`` with the parameters of every seed frozen before the epoch taken from ``start``: the fast step does
    not update them but may have marked them NaN (a non-finite gradient at the frozen parameters)."""
    frozen = np.asarray(start.diverged_at) >= 0  # one flag, or one per seed under vmap
    if not frozen.any():
        return end

    def keep(now: jax.Array, before: jax.Array) -> jax.Array:
        mask = jnp.asarray(frozen).reshape(frozen.shape + (1,) * (now.ndim - frozen.ndim))
        return jnp.where(mask, before, now)

    return end._replace(params=jax.tree.map(keep, end.params, start.params))


def _epoch_numbers(losses: list[list[np.ndarray]], accs: list[list[np.ndarray]], helds: list[list[np.ndarray]],
                   active: list[int], with_heldout: bool) -> dict[str, np.ndarray]:
    """One epoch's per-seed numbers across groups (one group per seed, or one holding every seed); a group
    that stopped early (every seed diverged) gives NaN."""
    def last(series: list[list[np.ndarray]], i: int) -> np.ndarray:
        return np.atleast_1d(series[i][-1] if i in active else np.full_like(series[i][-1], np.nan))

    out = {"train_loss": np.concatenate([last(losses, i) for i in range(len(losses))]),
           "train_accuracy": np.concatenate([last(accs, i) for i in range(len(accs))])}
    if with_heldout:
        held = np.concatenate([np.reshape(last(helds, i), (-1, 2)) for i in range(len(helds))])
        out["heldout_loss"], out["heldout_accuracy"] = held[:, 0], held[:, 1]
    return out


HELDOUT_CHUNK = 1000  # examples per held-out call: one compile, bounded activation memory


def _heldout_chunks(heldout: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """The held-out examples as equal chunks ``(x, y, weight)``; the last padded with weight 0."""
    if heldout is None or len(heldout[1]) == 0:
        return []
    x, y = np.asarray(heldout[0]), np.asarray(heldout[1])
    size = min(HELDOUT_CHUNK, len(y))
    chunks = []
    for start in range(0, len(y), size):
        xs, ys = x[start:start + size], y[start:start + size]
        pad = size - len(ys)
        weight = np.concatenate([np.ones(len(ys), np.float32), np.zeros(pad, np.float32)])
        if pad:
            xs = np.concatenate([xs, np.zeros((pad, *xs.shape[1:]), xs.dtype)])
            ys = np.concatenate([ys, np.zeros(pad, ys.dtype)])
        chunks.append((jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(weight)))
    return chunks


Variables = tuple[nnx.State, nnx.State]  # (params, model_state) of one seed, or seed-stacked


def variables(states: TrainState) -> Variables:
    """What evaluation needs of a training state: the parameters and the non-parameter state."""
    return states.params, states.model_state


def inference_model(graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State) -> nnx.Module:
    """The model in inference mode: Dropout off, BatchNorm on its running statistics (``nnx.view`` only
    changes static attributes, so inside ``jit`` this costs nothing at run time)."""
    return to_inference(nnx.merge(graphdef, params, model_state))



def make_logits(graphdef: nnx.GraphDef) -> Callable[[Variables, jax.Array], jax.Array]:
    """``logits(variables, x)`` in inference mode; pure, to be jitted or vmapped by the caller."""

    def logits(variables: Variables, x: jax.Array) -> jax.Array:
        return inference_model(graphdef, *variables)(x)

    return logits


def make_predict(graphdef: nnx.GraphDef) -> Callable[[Variables, jax.Array], jax.Array]:
    """``predict(variables, x) -> class indices`` in inference mode; pure, to be jitted or vmapped."""
    logits = make_logits(graphdef)

    def predict(variables: Variables, x: jax.Array) -> jax.Array:
        return logits(variables, x).argmax(-1).astype(jnp.int32)

    return predict


@functools.lru_cache(maxsize=32)
def _cached_trainer(graphdef: nnx.GraphDef, optimizer: str, plan: ExecutionPlan, augment_shift: int,
                    augment_mode: str) -> SeedTrainer:
    spec = TrainOptions.model_validate_json(optimizer)
    return SeedTrainer(graphdef, make_optimizer(spec), plan, augment_shift=augment_shift, augment_mode=augment_mode)


def trainer_for(graphdef: nnx.GraphDef, spec: TrainOptions, plan: ExecutionPlan) -> SeedTrainer:
    """The :class:`SeedTrainer` of this architecture, optimizer and plan, made once per process: a second
    training of the same architecture (another region, stage or seed group, another experiment in the same
    process) reuses its jitted programs instead of tracing and compiling them again. Equal graph definitions
    (structure and static options) are the same program, whatever the parameters."""
    optimizer = TrainOptions(optimizer=spec.optimizer, learning_rate=spec.learning_rate,
                             optimizer_options=spec.optimizer_options).model_dump_json()
    return _cached_trainer(graphdef, optimizer, plan, spec.augment_shift, spec.augment_mode)
