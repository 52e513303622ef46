"""The six attacks the paper evaluates, the zoo's trigger families and an adaptive attack: triggers
(pixel space) and poisoning recipes, one attack per module.

The six attack plugins (badnet, blended, sig, wanet, badencoder, badclip) are each a trigger plus a
recipe that backdoors a clean CLIP; their configs name the paper's value beside the toy world's where
they differ.

The parameterised trigger families (patch, blend, stripes, colour_filter, border) stretch the paper's
six, for model zoos. Each is a poisoning attack like BadNet (data poisoning + the same contrastive
fine-tuning), with the trigger drawn from a family: a patch of any content at any place, a blend of
noise or texture, stripes of any frequency and orientation, a global colour filter, a frame.
A zoo spec draws their parameters (``zoo/dev.yaml``); ``toolbox run --attack patch
--attack-param content=shape`` uses one directly.

``evasive`` is an adaptive attack against InverTune's own assumptions. ``base`` holds what they
share, ``poisoning`` the poisoning helpers.
"""
