"""TrainService: trains Word2Vec + Keras LSTM sentiment models and publishes versioned bundles.

What lives where: `server` (start and stop, one AsyncExitStack) -> `servicer` (protos <-> domain) ->
`runner` (the queue: one job at a time, watch, cancel) -> `workflow` (one job: download, probe, child,
publish, promote) -> `child` (the spawned trainer process) -> `trainer` (the recipe's steps) -> `network`
(the Keras model). Beside them: `job` (Job, JobState, Stage), `records` (jobs/<job_id>.json), `registry`
(published models; the one way to promote), `fetch` (the dataset), `workdir` (scratch), `params`,
`config`, `metrics`. The bundle format and its Manifest are `sentiment.bundle`'s.
"""
