"""run: one experiment, `./run.sh -m "why"` (`python -m autoresearch.run`).

TRAIN in a fresh sandbox (no network, train split only, killed at budget + a save margin of agent
compute), then EVAL: two model servers (agent code, no data) scored by the trusted scorer here;
the result is signed into runs/NNNN/metrics.json and summarised for the agent.

    runner        run_experiment (the two stages, in order, under the run lock)
    main          ./run.sh's command line: one run, --queue, --wait
    queue         a wave's queue on disk: runs/NNNN/queue.json and the saved snapshot; cancel
    scheduler     the local executor: up to executor.slots runs at once, one per GPU or CPU share
    exits         ./run.sh's exit codes; HarnessError, RunBusy
    inputs        budget, seed, prepare.py and the data, the evaluator's version, diff.patch
    layout        runs/NNNN/'s files, the one runs/ listing, run ids never reused, run.lock, .running
    specs         each stage's sandbox: mounts, environment, limits
    evaluate      the EVAL stage: two model servers and the scorer
    outcome       the one outcome ladder: sandbox result (+ scorer result) -> status, reason
    report        what the agent reads after a run
    logs, gpu     train.log (append, tail, steps/s); peak GPU memory polled from outside
    identity      fingerprint, snapshot of the editable set
    metrics       metrics.json: the signed run record, re-checked on the host
    scorer        the trusted scorer (val bytes, loss, hidden checks)
    model_server  runs INSIDE the sandbox with agent code; imports only protocol
    evalcmd       eval.command: the human's frozen eval script in its own sandbox
    evalsplit     eval.model: that script without agent code, the model in other sandboxes
    relay         the split's trusted relay: every answer checked, hidden re-asks
    array_server  the split's model server, INSIDE the sandbox; evalclient, the script's handle
    protocol      the EVAL wire format

This file imports nothing: `python -m autoresearch.inside.model_server` executes it inside the sandbox.
"""
