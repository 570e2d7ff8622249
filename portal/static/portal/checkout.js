// Checkout: mounts Stripe's Payment Element and confirms the payment. Stripe then
// sends the browser to the return page, which waits for the webhook to credit the
// top-up. The publishable key, the PaymentIntent's client secret and the return
// address come on #checkout's data attributes (no inline script: the CSP).
"use strict";

(function () {
  var root = document.getElementById("checkout");
  if (!root) {
    return;
  }
  var form = document.getElementById("checkout-form");
  var button = document.getElementById("checkout-pay");
  var message = document.getElementById("checkout-message");
  var slot = document.getElementById("payment-element");
  var say = function (text) { message.textContent = text; };

  if (typeof window.Stripe !== "function") {
    slot.textContent = "";
    say(
      "Stripe's payment form could not be loaded, so no payment can be taken here. " +
      "Check your connection or any content blocker, then reload this page."
    );
    return;
  }

  var stripe = window.Stripe(root.dataset.publishableKey);
  var elements = stripe.elements({ clientSecret: root.dataset.clientSecret });
  var payment = elements.create("payment");
  slot.textContent = "";
  payment.mount("#payment-element");
  button.disabled = false;

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    say("");
    stripe
      .confirmPayment({ elements: elements, confirmParams: { return_url: root.dataset.returnUrl } })
      .then(function (result) {
        // Only reached when the payment could not be confirmed: on success Stripe
        // has already sent the browser to the return page.
        if (result && result.error) {
          say(result.error.message || "The payment did not go through.");
          button.disabled = false;
        }
      }, function () {
        say("Stripe could not be reached. Nothing was charged: try again.");
        button.disabled = false;
      });
  });
})();
