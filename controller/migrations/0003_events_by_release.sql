-- The release page reads one release's entries of the event log.
CREATE INDEX events_release ON events (release_id, id);
