// The dashboard's few behaviours, without a framework:
// - [data-refresh]: fetch the URL every data-every ms and swap the element's content
//   (paused while the tab is hidden; stopped once a job/workflow panel says it is terminal);
// - [data-confirm] on a submit button: ask before submitting;
// - [data-select-all=name]: a checkbox that (un)checks every checkbox of that name.
(function () {
  "use strict";

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    var every = parseInt(el.getAttribute("data-every") || "5000", 10);
    var timer = null;
    function tick() {
      if (document.hidden) { timer = setTimeout(tick, every); return; }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          // Keep what the user is doing: don't swap while focus is inside the region.
          if (!el.contains(document.activeElement) || document.activeElement === document.body) {
            el.innerHTML = html;
          }
          var done = el.hasAttribute("data-until-terminal") && el.querySelector('[data-terminal="true"]');
          if (!done) { timer = setTimeout(tick, every); }
        })
        .catch(function () { timer = setTimeout(tick, every * 2); });
    }
    timer = setTimeout(tick, el.innerHTML.trim() === "<p>Loading…</p>" ? 0 : every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("[data-select-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        document.querySelectorAll('input[type=checkbox][name="' + box.getAttribute("data-select-all") + '"]')
          .forEach(function (c) { c.checked = box.checked; });
      });
    });
  });

  document.addEventListener("click", function (e) {
    var button = e.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) { e.preventDefault(); }
  });
})();
