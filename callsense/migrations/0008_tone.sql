-- 0008: tone fusion (issue 15): a scored utterance keeps the text model's probabilities beside the fused ones.
-- Applied by callsense/storage.py at start-up, inside one transaction under an advisory lock.

-- NULL when the voice took no part (text inputs, mixed channels, a speaker's first utterance, rows scored
-- before this migration): p_negative, p_neutral and p_positive are then the text model's alone.
ALTER TABLE nlp_events
    ADD COLUMN text_p_negative  double precision,
    ADD COLUMN text_p_neutral   double precision,
    ADD COLUMN text_p_positive  double precision,
    -- The fusion head's version (scorer_service/fusion/fusion.json), e.g. 'tone-2026.12.03-2110'.
    ADD COLUMN fusion_version   text;
