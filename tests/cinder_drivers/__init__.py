"""Tests of Cinder's storage drivers through aiocinder (needs the extra aiocinder[cinder]).

Not named ``cinder``: ``tests/`` is on ``sys.path`` while the tests run, and a
package of that name would shadow Cinder itself.
"""
