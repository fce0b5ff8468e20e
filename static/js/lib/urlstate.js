// The one writer of a page's view state to the address bar: every page keeps its state in the query string.

/**
 * A page's `save(state, {push})` for its `toQuery(state)`. `push` makes a history entry (a deliberate step that
 * Back undoes); otherwise the current entry is rewritten (a correction, such as a head this model lacks).
 */
export function urlWriter(toQuery) {
  return (state, { push = false } = {}) => {
    const query = toQuery(state);
    const url = query ? `${location.pathname}?${query}` : location.pathname;
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  };
}

/**
 * A page's `update(state, patch, {push})`, the one way its state changes: apply `patch` to `state` and put
 * the result in the address bar (see urlWriter for `push`). Returns `state`.
 */
export function stateUpdater(toQuery) {
  const save = urlWriter(toQuery);
  return (state, patch, { push = false } = {}) => {
    Object.assign(state, patch);
    save(state, { push });
    return state;
  };
}
