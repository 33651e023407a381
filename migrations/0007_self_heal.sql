-- Dead letters that requeue themselves once their cause clears. The fleet probes each
-- cause (Skeelo answering with our credentials; Skeelo's catalogue) and remembers when
-- its state last changed; a letter is requeued by the fleet at most once per such
-- change, marked on the row it requeued.
ALTER TABLE dead_letters ADD COLUMN auto_token text;
CREATE INDEX dead_letters_auto ON dead_letters (message_key, auto_token)
    WHERE auto_token IS NOT NULL;

CREATE TABLE self_heal_causes (
    cause      text PRIMARY KEY,
    -- 'up'/'down' for the partner; the sorted SKUs for the catalogue
    state      text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
