// A run in progress: say so where the user looks, with the time it has taken, and make the old results stale.

export class Progress {
  /** nodes: {box, text, run (the Run button), stale (panels the run will replace)}. */
  constructor(nodes) {
    this.nodes = nodes;
    this.timer = 0;
  }

  /** Show "Running the model on <size>… 1.2 s"; `inert` also takes the old results out of reach. */
  start(size, inert) {
    const t0 = performance.now();
    const tick = () => (this.nodes.text.textContent = `Running the model on ${size}… ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    tick();
    clearInterval(this.timer);
    this.timer = setInterval(tick, 100);
    this.#set(true, inert);
  }

  stop() {
    clearInterval(this.timer);
    this.#set(false, false);
  }

  #set(on, inert) {
    const { box, run, stale } = this.nodes;
    box.hidden = !on;
    run.disabled = on;
    run.textContent = on ? "Running…" : "Run ⏎";
    for (const node of stale) {
      node.classList.toggle("stale", on);
      node.inert = on && inert;
      node.setAttribute("aria-busy", String(on));
    }
  }
}
