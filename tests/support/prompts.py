"""Prompts the tests share: the indirect-object (IOI) pair of the README, as /api/patch and /api/circuit take it."""

IOI = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupted": "When Mary and John went to the store, Mary gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}
