// Starts Swagger UI on /docs. An external script, because the page's CSP forbids inline ones.
const openapi = document.currentScript.dataset.openapi;
window.ui = SwaggerUIBundle({
  url: openapi,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
});
