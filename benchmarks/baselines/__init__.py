"""Peer implementations measured beside ray_replay in the same run, one small adapter per file.

Every adapter takes the seed transition (state float32[8], action int64, reward float32,
next_state float32[8], done bool) and offers ``add``, ``add_batch``, ``prefill`` and ``sample``;
the prioritized ones also ``update_priorities``.
"""
