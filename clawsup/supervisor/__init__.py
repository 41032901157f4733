"""The supervisor: clawsup as PID 1. A map of its rooms, in the order to read them.

Nothing is imported here: ``clawsupctl`` and the tests import single modules, and each
costs only what it uses.

The programs
    program.py      One program's state machine, the only place its state changes; pure,
                    the world behind ``Effects`` and ``Clock``. Start here.
    backoff.py      Restart delays and jitter: pure functions.
    config.py       The config file, parsed once into frozen structs.

The loop around them (read main.py first: it builds and wires the others)
    main.py         The composition root: builds each room below, hands each the others
                    it calls, and says who reacts to a process exit, an event, a reload.
    daemon.py       ``Supervisor``: the program table, the effects a ``Program`` asks for
                    (spawn, kill, timers, events), reload and shutdown; ``run`` is the
                    numbered list of steps, as tini's ``main``.
    reaper.py       The one reaper: pid -> owner, collecting every exit status, a
                    program's exit reported once its whole tree is gone.
    tree.py         A program's whole process tree (cgroup or /proc registry): listing,
                    signalling, ending it.
    spawn.py        Starting one process: own process group, clean signal state, pipes.
    watch.py        Per ``Program`` object: the hang sampler's judgement (D state, stuck
                    threads, zombies) and the liveness/readiness probes.
    sampler.py      The sampler thread that reads /proc (procinfo.py, usage.py); judged
                    in watch.py by the thresholds in hang.py and resources.py (RSS and
                    CPU limits). probes.py: the http and tcp probes.
    relay.py        Programs' output to the container log, to logbuffer.py, as events.
    reload.py       A reload as a pure plan, section by section.

Around the programs for the whole run (service.py starts and closes them)
    service.py      The incident log, metrics, alerts, the control socket, the janitor,
                    sd_notify, and their timers; ``Service.deliver`` hands every event
                    to every sink.
    controller.py   Every command, from any door (control socket, restart flag, ops
                    files, the model breaker), carried out through the Supervisor.
    control.py      The ZeroMQ control and event sockets.
    kinds.py        The catalogue of event kinds; incidents.py, metrics.py, alerts.py
                    are the sinks.
    janitor/        Orphaned session locks and old transcripts: the directory set, the
                    session index, the pure policy, the sweep (core.py); locks.py,
                    message_timeout.py. inotify.py's one dispatcher serves it and
                    filewatch.py (the restart flag, the ops inbox).
    breaker.py      The model circuit breaker: pure. idle_restart.py: restart when idle.
    settings.py     The gateway's own settings (model, time zone), json5edit.py, and
                    opsfiles.py (the old watchdog's files); firstrun.py before the start.

Shared helpers
    procinfo.py     The one reader of /proc/PID/stat. libc.py: the one libc binding.
                    fileops.py: atomic writes, small reads, renames without replacing.
"""
