-- The W3C traceparent of the request that queued a job, so the job's spans continue that trace.
ALTER TABLE jobs ADD COLUMN trace_parent TEXT;
