DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE outbound_events;
DROP TABLE webhook_endpoints;
DROP TABLE usage_alerts;
