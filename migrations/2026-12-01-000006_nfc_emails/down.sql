-- Nothing to undo: the decomposed spellings were not kept.
SELECT 1;
