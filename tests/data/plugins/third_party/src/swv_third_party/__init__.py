"""An encoder, an adapter and a backbone written against swv's documented base classes only
(docs/plugins.md): the test suite trains, exports, reloads and runs them."""
