-- Where a deploy effect goes, recorded with its intent (JSON of `domain::DeployedTo`): a deploy
-- still running or failed then says where it began, so a configuration that moves its wave is
-- refused and a resumed deploy never goes elsewhere. NULL for other effects, and for deploys
-- begun before it was kept.
ALTER TABLE effects ADD COLUMN place TEXT
    CHECK (place IS NULL OR (kind = 'deploy' AND json_valid(place) AND json_type(place) = 'object'));
