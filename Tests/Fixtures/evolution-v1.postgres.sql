-- Events stored by an older box office, in the PostgreSQL store's schema (migrations 1+).
-- Loaded into a fresh schema by Tests/BackstagePostgresTests/FixtureEvolutionPostgresTests.swift,
-- which replaces __SCHEMA__ with that schema's name after the store ran its migrations.
-- "SeatSold" is the old name of "TicketSold"; "TicketSold" v1 and v2 are older shapes of v3.
INSERT INTO __SCHEMA__.streams (stream, version) VALUES ('show-s1', 4);
INSERT INTO __SCHEMA__.events (stream, stream_version, event_id, category, type, schema_version, data, recorded_at) VALUES
    ('show-s1', 1, '018e0a6c-0000-7000-8000-000000000001', 'show', 'ShowScheduled', 1, convert_to('{"showID":"s1","title":"Hamlet"}', 'UTF8'), '2024-03-01 19:00:00+00'),
    ('show-s1', 2, '018e0a6c-0000-7000-8000-000000000002', 'show', 'SeatSold', 1, convert_to('{"show":"s1","seat":"A1"}', 'UTF8'), '2024-03-02 10:00:00+00'),
    ('show-s1', 3, '018e0a6c-0000-7000-8000-000000000003', 'show', 'TicketSold', 1, convert_to('{"show":"s1","seat":"A2"}', 'UTF8'), '2024-06-02 10:00:00+00'),
    ('show-s1', 4, '018e0a6c-0000-7000-8000-000000000004', 'show', 'TicketSold', 2, convert_to('{"showID":"s1","ticketID":"A3","price":40}', 'UTF8'), '2025-01-02 10:00:00+00');
