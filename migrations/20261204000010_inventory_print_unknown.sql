-- A row stored while the catalogue could not be asked (MySQL unreachable or hung, and no cache knew
-- the blueprint) has no print *yet*: that is not "the catalogue has no print" (print_id NULL alone).
-- The flag says a remap is owed once the catalogue answers again; it is cleared when the catalogue has
-- answered for the row, mapped or not. The constant default adds the column without rewriting the table.
ALTER TABLE inventory_items
    ADD COLUMN print_unknown boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT inventory_items_print_unknown_check CHECK (NOT print_unknown OR print_id IS NULL);

-- The sellers owed a remap, read on every round of the check after an outage: only flagged rows.
CREATE INDEX inventory_items_print_unknown_idx ON inventory_items (user_id) WHERE print_unknown;
