"""stream_svc: tweets from the X API v2 filtered stream or a replay file -> clean -> PredictBatch -> DynamoDB."""
