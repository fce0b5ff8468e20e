// The Plotly options every page's plots share (Plotly itself is served from /vendor, never a CDN).

export const PLOT_CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"],
};
