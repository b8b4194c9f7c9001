"""stream_svc: tweets from the X API v2 filtered stream or a replay file -> clean -> PredictBatch -> DynamoDB.

Where things are: `app` runs the `run` command (one AsyncExitStack, SIGTERM drain, exit codes) with the
pipeline `wiring` builds for it and for `redrive` (Predict client, sink, dead letters); `health` the probes;
`pipeline` moves tweets through bounded queues (`batching.take_batch` forms every batch, `drain` bounds a
stop, `counters` is the tally); `sources` is the `Source` protocol, `replay` and `x_stream` the sources;
`tweets` the records read and their cleaning, `items` the table's item schema; `classify` the
`SentimentClient` protocol that `sentiment.predict_client.PredictClient` implements (gRPC stays there);
`sink` writes to DynamoDB, and is where DynamoDB throttling, `UnprocessedItems` and refused credentials
are retried; `dynamodb` the table's client config, typed JSON, error codes and admin calls (`create-table`);
`keys` the time-bucket key design (`time_bucket`, `time_sort`, `expires_at`, the `by_time` index);
`reads` the window Queries and the parallel Scan; `deadletter` the file of what could not be written
(rolled over), `shipper` its segments shipped to S3; `metrics` the `StreamMetrics` registry; `report`
the analysis; `commands` the other commands of `__main__`: `backfill`, `redrive`, `forget` (the table
and the dead letters); `config` every variable, declared once.
"""
