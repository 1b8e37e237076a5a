"""Wire-format codecs spoken by sluicegate; sans-IO, standard library only."""
