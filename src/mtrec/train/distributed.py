"""Data-parallel training on several processes and machines, launched by ``torchrun``.

mtrec builds on ``torch.distributed``: ``torchrun`` starts the processes and their rendezvous
(c10d, on one machine with ``--standalone`` or across several with ``--nnodes``,
``--rdzv-backend c10d`` and ``--rdzv-endpoint``); gloo carries CPU tensors and NCCL CUDA ones.
What mtrec adds is what makes the result independent of the number of processes:

* every process holds the whole model, initialised from the same seed, and draws the same
  shuffle and negatives from the same generator;
* process r takes its slice of every *global* batch, and the losses are divided by the global
  batch's size, so that summing the gradients over processes (one ``all_reduce``) gives the
  gradient of the global batch's mean: a run on N processes sees the samples, and computes the
  update, of a run on one process at the same global batch, up to the order of float additions;
* evaluation ranks each process's share of the users, and the per-user sums are added up over
  processes: the metrics are the single-process ones;
* process 0 alone writes the run's files.

A process that dies ends the job (torchrun stops the others); a collective that waits longer than
the timeout raises, naming the process that waited, instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mtrec.errors import ConfigError, MtrecError
from mtrec.settings import SettingsError

#: The backends: ``auto`` is NCCL for CUDA devices and gloo otherwise.
BACKENDS = ("auto", "gloo", "nccl")
#: Seconds a collective may wait for the other processes, by default.
DEFAULT_TIMEOUT = 300.0
#: How gradients travel: ``dense`` (one ``all_reduce`` of every parameter's gradient) or ``rows``
#: (the embedding-table rows each process's batch touched, gathered from every process, and an
#: ``all_reduce`` of the rest).
EXCHANGES = ("dense", "rows")


class DistributedError(MtrecError):
    """A process of a distributed run failed or stopped answering."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the same variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def restarted() -> bool:
    """Whether torchrun restarted this worker after a failure (its restart count is above 0)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def local_device(device: torch.device) -> torch.device:
    """The device this process of a torchrun launch trains on: for a CUDA ``device``, the process's own
    GPU (``cuda:LOCAL_RANK``), made the current one; else ``device``."""
    if device.type != "cuda":
        return device
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(local)
    return local


def _import_what_would_capture_the_group() -> None:
    """Import ``torch.distributed._shard`` before the process group exists.

    ``torch.optim`` imports ``torch._dynamo`` with the first optimizer, and dynamo imports
    ``torch.distributed._shard``, which, imported while a process group exists, keeps a reference to
    it: the group then outlives ``destroy_process_group``, and one of its gloo threads frees the last
    collective's work, whose tensors' Python objects it owns, after the main thread has begun the
    interpreter's finalization. Freeing them takes the GIL; a thread that asks for it then is ended
    by ``pthread_exit``, whose unwinding through a ``noexcept`` destructor calls ``std::terminate``:
    "terminate called without an active exception" and SIGABRT, after a finished run (about 1 run
    in 100 here). Imported first, it captures nothing, and :meth:`Distributed.close` joins the
    group's threads while the interpreter is whole.
    """
    import torch.distributed._shard  # noqa: F401


@dataclass
class Distributed:
    """This process's place in a distributed run, and the collectives mtrec uses.

    Parameters
    ----------
    rank, world_size:
        This process's number and the number of processes.
    local_rank:
        Its number on its machine (which GPU it takes).
    backend:
        ``gloo`` or ``nccl``.
    timeout:
        Seconds a collective may wait for the others.
    exchange:
        ``dense`` or ``rows`` (:data:`EXCHANGES`): how the training step's gradients are summed.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout: float = DEFAULT_TIMEOUT
    exchange: str = "dense"

    @classmethod
    def start(
        cls, backend: str = "auto", device: torch.device | None = None, timeout: float = DEFAULT_TIMEOUT,
        exchange: str = "dense",
    ) -> Distributed:  # fmt: skip
        """Join the process group torchrun set up (its environment variables name it)."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown distributed backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if exchange not in EXCHANGES:
            raise ConfigError(f"unknown gradient exchange {exchange!r}; use one of {', '.join(EXCHANGES)}")
        device = device or torch.device("cpu")
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise SettingsError([("", "the nccl backend needs {device} cuda; use {dist_backend} gloo on CPUs")])
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            _import_what_would_capture_the_group()
            wait = datetime.timedelta(seconds=timeout)
            # torchrun's store outlives a restart of the workers: the keys of each attempt get a prefix
            # of their own, so that restarted workers never read the addresses of the ones before.
            agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                is_master=rank == 0 and not agent_hosts_it, timeout=wait,
            )  # fmt: skip
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            prefixed = dist.PrefixStore(f"mtrec/attempt-{attempt}/", store)
            dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world_size, timeout=wait)
        return cls(rank, world_size, local_rank, backend, timeout, exchange)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, start: int, stop: int) -> tuple[int, int]:
        """This process's part of the global range [start, stop): contiguous, sizes differing by at most 1."""
        size = stop - start
        return start + (self.rank * size) // self.world_size, start + ((self.rank + 1) * size) // self.world_size

    def _guard(self, what: str, work):
        try:
            return work()
        except (RuntimeError, dist.DistBackendError) as error:  # a peer died or a collective timed out
            raise DistributedError(
                f"process {self.rank} of {self.world_size}: {what} failed (another process died or did not answer "
                f"within {self.timeout:g} s): {str(error).splitlines()[0]}"
            ) from None

    def sum(self, tensors: list[torch.Tensor]) -> None:
        """Add ``tensors`` up over the processes, in place: one ``all_reduce`` of them flattened together."""
        if not tensors:
            return
        flat = torch._utils._flatten_dense_tensors(tensors) if len(tensors) > 1 else tensors[0]
        self._guard("summing gradients", lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
        if len(tensors) > 1:
            for tensor, reduced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors)):
                tensor.copy_(reduced)

    def sum_rows(self, groups: list[tuple[torch.Tensor, list[torch.Tensor]]], dense: list[torch.Tensor]) -> None:
        """Add row-sparse gradients up over the processes, in place, sending only the rows in use.

        Each group is the row indices this process's batch touched (repeats allowed) and the
        gradients of the tables those indices address, zero in every other row. Each process
        sends those rows once (an ``all_gather``) and adds everyone's into its own tables one
        process at a time, in the order of the processes: the rows of one process are distinct,
        so no two additions of one call meet in a row (no atomics, on a GPU either), and every
        process ends with the same sums, bit for bit. ``dense`` (the gradients of everything
        else) is summed by :meth:`sum`.
        """
        self.sum(dense)
        if not groups:
            return
        rows = [torch.unique(indices) for indices, _ in groups]
        device = rows[0].device
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
        every = [torch.empty_like(counts) for _ in range(self.world_size)]
        self._guard("gathering gradient row counts", lambda: dist.all_gather(every, counts))
        every_count = torch.stack(every).tolist()  # [process][group]
        for index, ((_, tables), mine) in enumerate(zip(groups, rows)):
            most = max(process[index] for process in every_count)
            if most == 0:
                continue
            width = sum(table.shape[1] for table in tables)
            values = torch.zeros(most, width, dtype=tables[0].dtype, device=device)
            values[: len(mine)] = torch.cat([table.index_select(0, mine) for table in tables], dim=1)
            ids = torch.zeros(most, dtype=torch.int64, device=device)
            ids[: len(mine)] = mine
            all_values = [torch.empty_like(values) for _ in range(self.world_size)]
            all_ids = [torch.empty_like(ids) for _ in range(self.world_size)]
            self._guard("gathering gradient rows", lambda: dist.all_gather(all_ids, ids))
            self._guard("gathering gradient rows", lambda: dist.all_gather(all_values, values))
            used = [process[index] for process in every_count]
            column = 0
            for table in tables:
                table.index_fill_(0, mine, 0.0)
                for ids_p, values_p, n in zip(all_ids, all_values, used):
                    table.index_add_(0, ids_p[:n], values_p[:n, column : column + table.shape[1]])
                column += table.shape[1]

    def broadcast(self, value, src: int = 0):
        """``value`` of process ``src``, on every process (plain values: strings, numbers, None)."""
        payload = [value if self.rank == src else None]
        self._guard("a broadcast", lambda: dist.broadcast_object_list(payload, src=src))
        return payload[0]

    def barrier(self) -> None:
        self._guard("waiting for the other processes", lambda: dist.barrier())

    def close(self, wait: bool = True) -> None:
        """Leave the process group; with ``wait``, once every process has got here (so that none
        tears its connections down while another still uses them). After a failure, pass
        ``wait=False``: the others may be gone."""
        if dist.is_initialized():
            if wait:
                self.barrier()
            dist.destroy_process_group()
