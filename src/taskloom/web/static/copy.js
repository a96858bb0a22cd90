// Copy buttons: <button type="button" data-copy="ID" hidden> copies the value (or the text) of
// the element with that id. A script of the UI, loaded from this origin (the CSP allows
// no inline script): buttons stay hidden without it, and the field can still be selected and
// copied by hand.
"use strict";

function copyFrom(target) {
  const value = "value" in target ? target.value : target.textContent;
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(value);
  }
  // Plain http on another host: the clipboard API is not offered; select and copy instead.
  target.focus();
  if (typeof target.select === "function") target.select();
  return document.execCommand("copy") ? Promise.resolve() : Promise.reject(new Error("copy"));
}

document.querySelectorAll("button[data-copy]").forEach((button) => {
  const target = document.getElementById(button.dataset.copy);
  if (!target) return;
  const status = document.createElement("span");
  status.setAttribute("role", "status");
  status.className = "copy-status";
  button.after(status);
  button.hidden = false;
  button.addEventListener("click", () => {
    copyFrom(target).then(
      () => { status.textContent = "Copied."; },
      () => { status.textContent = "Select the text and copy it."; },
    );
  });
});
