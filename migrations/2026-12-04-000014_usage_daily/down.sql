DROP TABLE usage_daily_since; DROP TABLE usage_daily;
