"""Resource limits: is a program over ``max_rss`` or ``max_cpu`` long enough to restart it?

A pure judgement, as program.py is: samples of the program's whole tree (``Usage``, read
by the sampler thread, usage.py) go in, a ``Verdict`` comes out, and the loop carries it
out (a ``resource_limit`` event and a graceful restart, daemon.py). Time is the samples'
own monotonic ``at``, so tests drive it with made-up samples.

The rules, as the README's config section gives them:

- **max_cpu** must be exceeded for ``window`` without a break: each sample's CPU is the
  average since the one before, and the run over the limit starts where the first sample
  over it began. One sample under the limit ends the run.
- **max_rss** must be exceeded by ``RSS_SAMPLES`` samples in a row (two, a walk of the
  sampler apart: 5 s by default). The gateway peaks at 1.2 GB for a moment on a cold start; one
  high sample is not a leak, and a leak that grew past the limit is still there a few
  seconds later. It is not held to ``window``: memory that keeps growing for a minute
  may take the container with it before then.
- Only while the program is RUNNING: a start is allowed its peak (the gateway compiles
  and loads for up to a minute), and a program already stopping needs no second restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clawsup.units import format_size

Resource = Literal["rss", "cpu"]

# Samples in a row over max_rss before it counts (see the module docstring).
RSS_SAMPLES = 2


@dataclass(frozen=True)
class Limits:
    """``[programs.NAME.resources]``; None: that resource is not limited."""

    max_rss: int | None = None  # bytes
    max_cpu: float | None = None  # percent of one core
    window: float = 60.0  # seconds max_cpu must be exceeded

    @property
    def any(self) -> bool:
        return self.max_rss is not None or self.max_cpu is not None


NO_LIMITS = Limits()

@dataclass(frozen=True)
class Usage:
    """One sample of a program's whole tree."""

    pid: int  # the program's own process: a sample of another run is not judged
    at: float  # monotonic time of the sample
    rss: int  # bytes resident, summed over the tree
    # Percent of one core used since ``since`` (the sample before); None on the first.
    cpu_percent: float | None = None
    since: float | None = None


def over(usage: Usage, limits: Limits) -> frozenset[Resource]:
    """The limits this one sample is above."""
    found: set[Resource] = set()
    if limits.max_rss is not None and usage.rss > limits.max_rss:
        found.add("rss")
    if (limits.max_cpu is not None and usage.cpu_percent is not None
            and usage.cpu_percent > limits.max_cpu):
        found.add("cpu")
    return frozenset(found)


@dataclass(frozen=True)
class Judgement:
    """What the samples of one run have shown so far."""

    pid: int | None = None
    rss_samples: int = 0  # samples in a row over max_rss
    rss_over_since: float | None = None  # the first of them
    cpu_over_since: float | None = None  # start of the run over max_cpu


NOT_OVER = Judgement()


@dataclass(frozen=True)
class Verdict:
    """A limit held long enough: restart the program."""

    resource: Resource
    value: float  # bytes (rss) or percent (cpu) at the last sample
    limit: float
    seconds: float  # how long it has been over (rss: since the first sample over)
    samples: int  # rss: samples in a row over; cpu: 0

    def message(self, program: str) -> str:
        if self.resource == "rss":
            return (f"{program} uses {format_size(int(self.value))} of memory (RSS of its "
                    f"tree), over max_rss {format_size(int(self.limit))} for {self.samples} "
                    "samples in a row, restarting")
        return (f"{program} used {self.value:.0f}% CPU, over max_cpu {self.limit:g}% for "
                f"{self.seconds:.1f}s, restarting")



def judge(judgement: Judgement, usage: Usage, limits: Limits, *,
          running: bool) -> tuple[Judgement, Verdict | None]:
    """The judgement after ``usage``, and a verdict once a limit has held long enough.

    After a verdict the judgement starts over: the restart brings a new run anyway.
    """
    if not running:
        return NOT_OVER, None
    if judgement.pid != usage.pid:
        judgement = Judgement(pid=usage.pid)
    above = over(usage, limits)
    rss_samples = judgement.rss_samples + 1 if "rss" in above else 0
    rss_since = None
    if rss_samples:
        rss_since = judgement.rss_over_since if judgement.rss_over_since is not None else usage.at
    cpu_since = None
    if "cpu" in above:
        began = usage.since if usage.since is not None else usage.at
        cpu_since = judgement.cpu_over_since if judgement.cpu_over_since is not None else began
    judgement = Judgement(pid=usage.pid, rss_samples=rss_samples, rss_over_since=rss_since,
                          cpu_over_since=cpu_since)
    if limits.max_rss is not None and rss_since is not None and rss_samples >= RSS_SAMPLES:
        return Judgement(pid=usage.pid), Verdict(
            resource="rss", value=usage.rss, limit=limits.max_rss,
            seconds=usage.at - rss_since, samples=rss_samples)
    if (limits.max_cpu is not None and cpu_since is not None
            and usage.at - cpu_since >= limits.window):
        assert usage.cpu_percent is not None
        return Judgement(pid=usage.pid), Verdict(
            resource="cpu", value=usage.cpu_percent, limit=limits.max_cpu,
            seconds=usage.at - cpu_since, samples=0)
    return judgement, None
