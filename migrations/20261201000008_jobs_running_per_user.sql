-- The claim query ranks candidates by how many jobs their seller runs in the lane. Without this index
-- that count read every job the seller ever had (purchases leave thousands behind), once per candidate.
CREATE INDEX jobs_running_user_lane_idx ON jobs (user_id, lane) WHERE state = 'running';
