"""The one place where outside data enters: files (regular files only, bounded reads), numbers
(finite, within stated ranges), images (dimensions checked before decoding) and result documents
(strict JSON, finite metrics). Public: the adapters read their formats through it too."""
