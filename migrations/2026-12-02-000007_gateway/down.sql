DROP TABLE api_upstreams;
DELETE FROM apis WHERE method NOT IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE');
ALTER TABLE apis DROP CONSTRAINT apis_method_check;
ALTER TABLE apis ADD CONSTRAINT apis_method_check CHECK (method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE'));
