// payg console conveniences. Every page works without this script: it only
// copies a key or secret to the clipboard, asks before a destructive form is
// sent (close, void, revoke, rotate), keeps a form from being sent twice,
// and opens the print dialog. No inline script anywhere (the CSP forbids it).
"use strict";

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const field = document.getElementById(copy.dataset.copy);
    if (field) {
      field.select();
      navigator.clipboard.writeText(field.value).then(
        () => { copy.textContent = "Copied"; },
        () => { copy.textContent = "Press Ctrl+C"; },
      );
    }
    return;
  }
  if (event.target.closest("[data-print]")) {
    window.print();
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  // A second click while the first submission is on its way sends nothing;
  // the button shows the form is being sent.
  const button = event.submitter;
  if (button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  }
});

// A page restored by Back shows its buttons as they were left: usable again.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    for (const button of document.querySelectorAll("button[aria-busy]")) {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }
});
