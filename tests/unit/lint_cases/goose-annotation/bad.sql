-- +goose Up
CREATE TABLE coupons (id bigint PRIMARY KEY);
-- expect: goose-annotation
-- +goose Up
CREATE INDEX coupons_id_idx ON coupons (id);
