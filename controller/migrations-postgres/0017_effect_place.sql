-- Where a deploy effect goes, recorded with its intent. Same column as ../migrations/0017.
ALTER TABLE effects ADD COLUMN place TEXT;
ALTER TABLE effects ADD CONSTRAINT effects_place_of_a_deploy
    CHECK (place IS NULL OR (kind = 'deploy' AND json_typeof(place::json) = 'object'));
