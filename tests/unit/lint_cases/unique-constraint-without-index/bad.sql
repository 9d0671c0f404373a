-- +goose Up
SET lock_timeout = '5s';
-- expect: unique-constraint-without-index
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);
