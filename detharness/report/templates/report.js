// Optional: a filter box over the case sections and a button to open or close them all.
// The page reads the same without it (the Content-Security-Policy allows this script only).
(function () {
  "use strict";
  var root = document.documentElement;
  var cases = Array.prototype.slice.call(document.querySelectorAll("details.case"));
  var anchor = document.getElementById("cases");
  if (anchor && cases.length) {
    var bar = document.createElement("div");
    bar.className = "filterbar";
    var input = document.createElement("input");
    input.id = "filter";
    input.type = "search";
    input.placeholder = "filter cases by id or status";
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.textContent = "open all";
    bar.appendChild(input);
    bar.appendChild(document.createTextNode(" "));
    bar.appendChild(toggle);
    anchor.insertBefore(bar, anchor.children[1] || null);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      cases.forEach(function (d) {
        var text = (d.getAttribute("data-case") + " " + d.getAttribute("data-status")).toLowerCase();
        var keep = words.every(function (w) { return text.indexOf(w) !== -1; });
        d.classList.toggle("hidden", !keep);
      });
    });
    toggle.addEventListener("click", function () {
      var open = toggle.textContent === "open all";
      cases.forEach(function (d) { d.open = open; });
      toggle.textContent = open ? "close all" : "open all";
    });
  }
  root.setAttribute("data-enhanced", "1");
})();
