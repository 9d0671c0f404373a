-- +goose Up
CREATE TABLE import_staging (id bigint, payload jsonb);
INSERT INTO import_staging VALUES (1, '{}');
DROP TABLE import_staging;
