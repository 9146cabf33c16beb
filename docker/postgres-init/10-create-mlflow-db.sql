-- Runs once, when the postgres container initialises an empty data volume
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER, after POSTGRES_DB (the Optuna storage) exists.
-- Creates the second database: MLflow's tracking store and its basic-auth user store.
CREATE DATABASE mlflow;
