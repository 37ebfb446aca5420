DROP TABLE meter_flushes; DROP TABLE usage_records; DROP TABLE apis;
